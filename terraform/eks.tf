# The EKS cluster: API on a private endpoint (a public one only when asked,
# and only to the given CIDRs), every control-plane log type in CloudWatch,
# Kubernetes Secrets envelope-encrypted with a KMS key, access managed by
# EKS access entries (the identity that applies this is cluster admin).
# One managed node group in the private subnets, IMDSv2 only; the OIDC
# provider lets pods assume IAM roles (IRSA, irsa.tf) instead of using the
# nodes' role.

locals {
  cluster_log_types = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
}

# Created before the cluster so that it has our retention and key (EKS
# would otherwise create it unencrypted, kept forever).
resource "aws_cloudwatch_log_group" "eks" {
  name              = "/aws/eks/${local.name}/cluster"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.logs.arn
}

# ---------------------------------------------------------------- cluster role

data "aws_iam_policy_document" "cluster_trust" {
  statement {
    sid     = "EksControlPlane"
    effect  = "Allow"
    actions = ["sts:AssumeRole", "sts:TagSession"]

    principals {
      type        = "Service"
      identifiers = ["eks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "cluster" {
  name               = "${local.name}-eks-cluster"
  assume_role_policy = data.aws_iam_policy_document.cluster_trust.json
}

resource "aws_iam_role_policy_attachment" "cluster" {
  role       = aws_iam_role.cluster.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonEKSClusterPolicy"
}

data "aws_iam_policy_document" "cluster_secrets_key" {
  statement {
    sid       = "EnvelopeEncryptSecrets"
    effect    = "Allow"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ListGrants", "kms:DescribeKey"]
    resources = [aws_kms_key.eks.arn]
  }
}

resource "aws_iam_role_policy" "cluster_secrets_key" {
  name   = "secrets-encryption-key"
  role   = aws_iam_role.cluster.id
  policy = data.aws_iam_policy_document.cluster_secrets_key.json
}

# ---------------------------------------------------------------- cluster

resource "aws_eks_cluster" "this" {
  name                      = local.name
  version                   = var.cluster_version
  role_arn                  = aws_iam_role.cluster.arn
  enabled_cluster_log_types = local.cluster_log_types

  access_config {
    authentication_mode                         = "API"
    bootstrap_cluster_creator_admin_permissions = true
  }

  vpc_config {
    subnet_ids              = aws_subnet.private[*].id
    endpoint_private_access = true
    endpoint_public_access  = var.cluster_endpoint_public_access
    public_access_cidrs     = var.cluster_endpoint_public_access ? var.cluster_endpoint_public_access_cidrs : null
  }

  encryption_config {
    resources = ["secrets"]

    provider {
      key_arn = aws_kms_key.eks.arn
    }
  }

  lifecycle {
    precondition {
      condition     = !var.cluster_endpoint_public_access || length(var.cluster_endpoint_public_access_cidrs) > 0
      error_message = "cluster_endpoint_public_access needs cluster_endpoint_public_access_cidrs: without them EKS opens the public endpoint to 0.0.0.0/0."
    }
  }

  depends_on = [
    aws_cloudwatch_log_group.eks,
    aws_iam_role_policy_attachment.cluster,
    aws_iam_role_policy.cluster_secrets_key,
  ]
}

# IRSA: pods exchange their projected ServiceAccount token for the
# credentials of a role whose trust policy names that ServiceAccount.
resource "aws_iam_openid_connect_provider" "eks" {
  url            = aws_eks_cluster.this.identity[0].oidc[0].issuer
  client_id_list = ["sts.amazonaws.com"]
}

# ---------------------------------------------------------------- nodes

data "aws_iam_policy_document" "node_trust" {
  statement {
    sid     = "Ec2Nodes"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "node" {
  name               = "${local.name}-eks-node"
  assume_role_policy = data.aws_iam_policy_document.node_trust.json
}

# What a node itself needs: join the cluster, run the VPC CNI, pull images.
# Workloads get AWS access through IRSA only: IMDS is closed to pods below.
resource "aws_iam_role_policy_attachment" "node" {
  for_each = toset([
    "AmazonEKSWorkerNodePolicy",
    "AmazonEKS_CNI_Policy",
    "AmazonEC2ContainerRegistryPullOnly",
  ])

  role       = aws_iam_role.node.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/${each.value}"
}

# The nodes' own security group: the one the database admits (rds.tf). The
# nodes also carry the cluster security group EKS made (node <-> control
# plane, node <-> node); a launch template that names security groups
# must name that one too.
resource "aws_security_group" "node" {
  name        = "${local.name}-node"
  description = "EKS nodes of ${local.name}: the only source the database admits"
  vpc_id      = aws_vpc.this.id

  tags = { Name = "${local.name}-node" }
}

resource "aws_vpc_security_group_egress_rule" "node_to_db" {
  security_group_id            = aws_security_group.node.id
  description                  = "PostgreSQL on the RDS instance"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.db.id
}

resource "aws_launch_template" "node" {
  name_prefix            = "${local.name}-node-"
  description            = "EKS nodes of ${local.name}: IMDSv2 only, encrypted gp3 root volume"
  update_default_version = true
  vpc_security_group_ids = [aws_eks_cluster.this.vpc_config[0].cluster_security_group_id, aws_security_group.node.id]

  # IMDSv2 only, one hop: the node's processes reach the metadata service,
  # containers (one hop further) do not, so no pod can borrow the node role.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  # The AWS-managed EBS key: a customer key would need a key policy naming
  # the Auto Scaling service-linked role, which a fresh account does not
  # have until its first Auto Scaling group exists.
  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      volume_size           = var.node_disk_size
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = true
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${local.name}-node" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.tags, { Name = "${local.name}-node" })
  }
}

resource "aws_eks_node_group" "default" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "${local.name}-default"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = aws_subnet.private[*].id
  ami_type        = "AL2023_x86_64_STANDARD"
  capacity_type   = "ON_DEMAND"
  instance_types  = var.node_instance_types

  launch_template {
    id      = aws_launch_template.node.id
    version = aws_launch_template.node.latest_version
  }

  scaling_config {
    min_size     = var.node_min_size
    desired_size = var.node_desired_size
    max_size     = var.node_max_size
  }

  update_config {
    max_unavailable = 1
  }

  lifecycle {
    # An autoscaler (or a person) may change the node count; apply keeps it.
    ignore_changes = [scaling_config[0].desired_size]

    precondition {
      condition     = var.node_min_size <= var.node_desired_size && var.node_desired_size <= var.node_max_size
      error_message = "The node group sizes must satisfy node_min_size <= node_desired_size <= node_max_size."
    }
  }

  depends_on = [aws_iam_role_policy_attachment.node]
}
