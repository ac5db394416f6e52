# Customer-managed KMS keys, one per kind of data so each key policy names
# only the service that needs it, and one can be disabled without touching
# the others. Every key rotates yearly. Each policy's first statement gives
# the account (its IAM policies) control of the key, as AWS's default key
# policy does; without it a key whose policy names no administrator becomes
# unmanageable.
#
# EBS volumes use the account's AWS-managed EBS key instead: the nodes' root
# volumes (eks.tf) and the persistent volumes of the StorageClass
# devenv/aws.sh makes (storage.tf).

locals {
  kms_account_root_statement = {
    Sid       = "AccountAdministersThroughIam"
    Effect    = "Allow"
    Principal = { AWS = "arn:${local.partition}:iam::${local.account_id}:root" }
    Action    = "kms:*"
    Resource  = "*"
  }
}

# CloudWatch Logs: VPC flow logs, EKS control-plane logs, RDS logs, IoT Core
# logs. The logs service may use the key only for log groups of this account
# and region (the encryption context names the log group).
resource "aws_kms_key" "logs" {
  description             = "${local.name}: CloudWatch log groups (flow logs, EKS, RDS, IoT Core)"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_days

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      local.kms_account_root_statement,
      {
        Sid       = "CloudWatchLogsOfThisAccount"
        Effect    = "Allow"
        Principal = { Service = "logs.${var.region}.amazonaws.com" }
        Action    = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*"
        Condition = {
          ArnLike = {
            "kms:EncryptionContext:aws:logs:arn" = "${local.logs_arn}:log-group:*"
          }
        }
      },
    ]
  })
}

resource "aws_kms_alias" "logs" {
  name          = "alias/${local.name}-logs"
  target_key_id = aws_kms_key.logs.key_id
}

# Kubernetes Secrets in etcd (EKS envelope encryption). The cluster role's
# use of it is granted in eks.tf.
resource "aws_kms_key" "eks" {
  description             = "${local.name}: EKS secrets envelope encryption"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_days

  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [local.kms_account_root_statement]
  })
}

resource "aws_kms_alias" "eks" {
  name          = "alias/${local.name}-eks"
  target_key_id = aws_kms_key.eks.key_id
}

# The database: storage, snapshots, Performance Insights, and the master
# user's secret in Secrets Manager. RDS and Secrets Manager use it through
# grants made on behalf of whoever applies this configuration.
resource "aws_kms_key" "db" {
  description             = "${local.name}: RDS storage, Performance Insights, master user secret"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_days

  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [local.kms_account_root_statement]
  })
}

resource "aws_kms_alias" "db" {
  name          = "alias/${local.name}-db"
  target_key_id = aws_kms_key.db.key_id
}

# Container images in ECR.
resource "aws_kms_key" "ecr" {
  description             = "${local.name}: ECR repositories"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_days

  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [local.kms_account_root_statement]
  })
}

resource "aws_kms_alias" "ecr" {
  name          = "alias/${local.name}-ecr"
  target_key_id = aws_kms_key.ecr.key_id
}
