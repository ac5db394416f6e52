# The tool and provider versions terraform/ is written for: Terraform or
# OpenTofu >= 1.10, the first with the S3 backend's own state locking
# (`use_lockfile`, which the deploy workflow's backend uses; no DynamoDB
# table). The provider's exact version and its release checksums are
# pinned in .terraform.lock.hcl beside this file (commit it; `terraform
# init -upgrade` moves it within the constraint below).
#
# State: local (terraform.tfstate beside these files, git-ignored) unless a
# backend is configured. For a shared account, keep state remotely, e.g. an
# S3 backend with a KMS key and native locking:
#
#   terraform { backend "s3" {} }     # in a backend.tf of your own, then
#   terraform init -backend-config=backend.hcl
#   # backend.hcl: bucket, key, region, encrypt = true, use_lockfile = true
#
# (devenv/aws.sh passes FLEETWARD_TF_BACKEND_CONFIG to -backend-config=).
terraform {
  required_version = ">= 1.10.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
    }
  }
}
