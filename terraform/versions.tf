# The tool and provider versions terraform/ is written for. Terraform >= 1.6
# or OpenTofu >= 1.6 (devenv/terraform-check.sh formats with OpenTofu).
#
# State: local (terraform.tfstate beside these files, git-ignored) unless a
# backend is configured. For a shared account, keep state remotely, e.g. an
# S3 backend with a KMS key and native locking:
#
#   terraform { backend "s3" {} }     # in a backend.tf of your own, then
#   terraform init -backend-config=backend.hcl
#
# (devenv/aws.sh passes FLEETWARD_TF_BACKEND_CONFIG to -backend-config=).
terraform {
  required_version = ">= 1.6.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
    }
  }
}
