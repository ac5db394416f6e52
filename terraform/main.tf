# fleetward on AWS: the provider, the account facts every file uses, and
# names and tags shared by all resources.
#
#   network.tf   VPC over var.az_count zones: public subnets (NAT, load
#                balancers), private subnets (nodes), database subnets (no
#                route out), NAT, flow logs
#   eks.tf       the cluster (private endpoint, secrets encrypted, every
#                control-plane log), a managed node group, the OIDC provider
#   irsa.tf      the IAM role of the operator's ServiceAccount (AWS IoT Core)
#   storage.tf   the EBS CSI driver addon and its IAM role (persistent volumes)
#   rds.tf       PostgreSQL 16 (encrypted, TLS only, password in Secrets Manager)
#   ecr.tf       one repository per image
#   iot.tf       AWS IoT Core logging to CloudWatch
#   kms.tf       the customer-managed keys behind all of the above

provider "aws" {
  region = var.region

  default_tags {
    tags = local.tags
  }
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

# The zones, named (not "the first N the region lists"), so that a zone AWS
# adds later can never move subnets; the data source proves they exist.
data "aws_availability_zones" "available" {
  state = "available"

  filter {
    name   = "zone-name"
    values = local.az_names
  }

  lifecycle {
    postcondition {
      condition     = length(self.names) == var.az_count
      error_message = "Not all of the zones ${join(", ", local.az_names)} are available in ${var.region}: name az_count available zones in var.availability_zones."
    }
  }
}

locals {
  name       = var.name
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  az_names = length(var.availability_zones) > 0 ? var.availability_zones : [
    for letter in slice(["a", "b", "c", "d"], 0, var.az_count) : "${var.region}${letter}"
  ]
  azs = sort(data.aws_availability_zones.available.names)

  # ARN prefixes, so policies name this account and region only.
  iot_arn  = "arn:${local.partition}:iot:${var.region}:${local.account_id}"
  logs_arn = "arn:${local.partition}:logs:${var.region}:${local.account_id}"

  tags = merge(
    {
      Project   = "fleetward"
      ManagedBy = "terraform"
    },
    var.tags,
  )
}
