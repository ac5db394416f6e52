# What devenv/aws.sh (./deploy.sh aws-up) reads with `terraform output -json`.

output "region" {
  description = "AWS region of every resource."
  value       = var.region
}

output "cluster_name" {
  description = "Name of the EKS cluster."
  value       = aws_eks_cluster.this.name
}

output "kubeconfig_command" {
  description = "Writes a kubeconfig entry for the cluster (the API endpoint is private unless cluster_endpoint_public_access is on)."
  value       = "aws eks update-kubeconfig --region ${var.region} --name ${aws_eks_cluster.this.name}"
}

output "ecr_repository_urls" {
  description = "Image name -> ECR repository URL (<account>.dkr.ecr.<region>.amazonaws.com/<name>/<image>)."
  value       = { for image, repo in aws_ecr_repository.image : image => repo.repository_url }
}

output "operator_role_arn" {
  description = "IAM role for the operator's ServiceAccount: the chart's operator.serviceAccount.annotations.\"eks.amazonaws.com/role-arn\"."
  value       = aws_iam_role.operator.arn
}

output "operator_service_account" {
  description = "The only ServiceAccount (namespace/name) that can assume operator_role_arn."
  value       = "${var.operator_namespace}/${var.operator_service_account}"
}

output "db_endpoint" {
  description = "Host name of the RDS PostgreSQL instance (TLS required)."
  value       = aws_db_instance.this.address
}

output "db_port" {
  description = "Port of the RDS PostgreSQL instance."
  value       = aws_db_instance.this.port
}

output "db_name" {
  description = "Name of the database."
  value       = aws_db_instance.this.db_name
}

output "db_secret_arn" {
  description = "Secrets Manager secret (JSON with username and password) of the database's master user, kept and rotated by RDS."
  value       = aws_db_instance.this.master_user_secret[0].secret_arn
}

output "iot_log_group" {
  description = "CloudWatch log group of AWS IoT Core's logs."
  value       = aws_cloudwatch_log_group.iot.name
}
