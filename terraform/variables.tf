# Inputs. Defaults give a production-shaped installation (multi-AZ database,
# deletion protection, private cluster endpoint); see each description for
# what to change for a short-lived test account.

# ---------------------------------------------------------------- general

variable "region" {
  description = "AWS region for every resource (IoT Core included)."
  type        = string
  default     = "eu-west-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-[0-9]$", var.region))
    error_message = "The region must be an AWS region name such as eu-west-1."
  }
}

variable "name" {
  description = "Name prefix of every resource: the EKS cluster, the RDS instance, the ECR repositories (<name>/<image>), IAM roles, KMS aliases."
  type        = string
  default     = "fleetward"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}[a-z0-9]$", var.name))
    error_message = "The name must be 3-24 characters of lower-case letters, digits and hyphens, starting with a letter."
  }
}

variable "tags" {
  description = "Extra tags for every resource (added to Project and ManagedBy)."
  type        = map(string)
  default     = {}
}

variable "log_retention_days" {
  description = "Retention of every CloudWatch log group (VPC flow logs, EKS control plane, RDS, IoT Core). At least a year."
  type        = number
  default     = 365

  validation {
    condition     = contains([365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "The retention must be a CloudWatch Logs retention of at least 365 days (365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288 or 3653)."
  }
}

variable "kms_deletion_window_days" {
  description = "Days a deleted KMS key can still be restored."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_deletion_window_days >= 7 && var.kms_deletion_window_days <= 30
    error_message = "The KMS deletion window must be between 7 and 30 days."
  }
}

# ---------------------------------------------------------------- network

variable "vpc_cidr" {
  description = "CIDR block of the VPC, a /16 or larger. Subnets are carved from it: per zone a public /24, a private /20 for nodes and pods (the VPC CNI gives pods VPC addresses) and a database /24 (sizes for a /16)."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && try(tonumber(split("/", var.vpc_cidr)[1]) <= 16, false)
    error_message = "The VPC CIDR must be a valid IPv4 block of /16 or larger (the subnet layout needs /20s)."
  }
}

variable "az_count" {
  description = "Availability zones to spread subnets over (EKS and a multi-AZ RDS need at least two)."
  type        = number
  default     = 3

  validation {
    condition     = var.az_count >= 2 && var.az_count <= 4
    error_message = "Use 2 to 4 availability zones."
  }
}

variable "availability_zones" {
  description = "The az_count zones to use, by name. Empty: <region>a, <region>b, ... in order, right for eu-west-1 and most regions; name them where a letter is missing (e.g. us-west-1, ap-northeast-1)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for z in var.availability_zones : can(regex("^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-[0-9][a-z]$", z))])
    error_message = "Each zone must be a zone name such as eu-west-1a."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all zones (cheaper, but a zone outage cuts every node's way out) instead of one per zone."
  type        = bool
  default     = false
}

# ---------------------------------------------------------------- EKS

variable "cluster_version" {
  description = "Kubernetes version of the EKS control plane and node group."
  type        = string
  default     = "1.35"

  validation {
    condition     = can(regex("^1\\.[0-9]{2}$", var.cluster_version))
    error_message = "The cluster version must be a Kubernetes minor version such as 1.35."
  }
}

variable "cluster_endpoint_public_access" {
  description = "Expose the Kubernetes API on a public endpoint as well as the private one (only to cluster_endpoint_public_access_cidrs). Off: kubectl and helm must run inside the VPC (a bastion, a VPN, CI runners in the VPC)."
  type        = bool
  default     = false
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "The only source CIDRs admitted to the public API endpoint (e.g. your office or CI egress address as a /32). Required when the public endpoint is on; 0.0.0.0/0 is refused."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.cluster_endpoint_public_access_cidrs : can(cidrhost(c, 0)) && !startswith(c, "0.0.0.0/")])
    error_message = "Each public access CIDR must be a valid IPv4 block, and 0.0.0.0/0 (the whole internet) is not allowed."
  }
}

variable "node_instance_types" {
  description = "EC2 instance types of the managed node group (x86_64: the images are built for linux/amd64)."
  type        = list(string)
  default     = ["t3.large"]

  validation {
    condition     = length(var.node_instance_types) > 0
    error_message = "Give at least one node instance type."
  }
}

variable "node_min_size" {
  description = "Fewest nodes in the node group."
  type        = number
  default     = 2

  validation {
    condition     = var.node_min_size >= 1
    error_message = "The node group needs at least one node."
  }
}

variable "node_desired_size" {
  description = "Nodes the node group starts with (later changes by hand or an autoscaler are not reverted)."
  type        = number
  default     = 2

  validation {
    condition     = var.node_desired_size >= 1
    error_message = "The desired size must be at least one node."
  }
}

variable "node_max_size" {
  description = "Most nodes in the node group."
  type        = number
  default     = 4

  validation {
    condition     = var.node_max_size >= 1 && var.node_max_size <= 100
    error_message = "The maximum size must be between 1 and 100 nodes."
  }
}

variable "node_disk_size" {
  description = "Root volume size of each node in GiB (gp3, encrypted)."
  type        = number
  default     = 50

  validation {
    condition     = var.node_disk_size >= 20 && var.node_disk_size <= 1000
    error_message = "The node disk size must be between 20 and 1000 GiB."
  }
}

# ------------------------------------------------------- workload identities

variable "operator_namespace" {
  description = "Namespace the chart (and so the operator) is installed in: devenv/aws.sh installs release fleetward in namespace fleetward (FLEETWARD_AWS_NAMESPACE)."
  type        = string
  default     = "fleetward"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.operator_namespace))
    error_message = "The namespace must be a Kubernetes namespace name (RFC 1123 label)."
  }
}

variable "operator_service_account" {
  description = "The operator's ServiceAccount: the chart names it <release>-operator (helm/fleetward/templates/operator-rbac.yaml)."
  type        = string
  default     = "fleetward-operator"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", var.operator_service_account))
    error_message = "The ServiceAccount must be a Kubernetes object name (RFC 1123 subdomain)."
  }
}

variable "iot_namespaces" {
  description = "Namespaces whose Gateways and Devices use AWS IoT Core (provider: awsIot). The operator names a Device's thing and policy <namespace>_<device> and a gateway workload's policy <namespace>_<gateway>_gateway, so its IAM role may touch only things and policies with these prefixes."
  type        = list(string)
  default     = ["fleetward"]

  validation {
    condition     = length(var.iot_namespaces) > 0 && alltrue([for n in var.iot_namespaces : can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", n))])
    error_message = "Give at least one namespace, each a Kubernetes namespace name (no wildcards)."
  }
}

# ---------------------------------------------------------------- RDS

variable "db_instance_class" {
  description = "RDS instance class of the PostgreSQL database."
  type        = string
  default     = "db.t4g.medium"

  validation {
    condition     = can(regex("^db\\.[a-z0-9]+\\.[a-z0-9]+$", var.db_instance_class))
    error_message = "The instance class must be an RDS class such as db.t4g.medium."
  }
}

variable "db_allocated_storage" {
  description = "Initial database storage in GiB (gp3)."
  type        = number
  default     = 20

  validation {
    condition     = var.db_allocated_storage >= 20 && var.db_allocated_storage <= 65536
    error_message = "The allocated storage must be between 20 and 65536 GiB."
  }
}

variable "db_max_allocated_storage" {
  description = "Upper bound for storage autoscaling in GiB (0 turns autoscaling off)."
  type        = number
  default     = 100

  validation {
    condition     = var.db_max_allocated_storage == 0 || var.db_max_allocated_storage >= 20
    error_message = "The maximum storage must be 0 (no autoscaling) or at least 20 GiB."
  }
}

variable "db_multi_az" {
  description = "A standby in a second zone with automatic failover. Turn off only for throwaway environments."
  type        = bool
  default     = true
}

variable "db_backup_retention_days" {
  description = "Days automated backups (point-in-time recovery) are kept."
  type        = number
  default     = 14

  validation {
    condition     = var.db_backup_retention_days >= 7 && var.db_backup_retention_days <= 35
    error_message = "Backups must be kept between 7 and 35 days."
  }
}

variable "deletion_protection" {
  description = "Refuse to delete the database: `terraform destroy` fails until this is false and applied. Deleting it always leaves a final snapshot (<name>-postgres-final)."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------- ECR

variable "images" {
  description = "The project's images, one ECR repository each (<name>/<image>): the list devenv/images.sh builds and devenv/aws.sh pushes."
  type        = list(string)
  default     = ["operator", "gateway", "ingestor", "encryptor", "billing", "mosquitto"]

  validation {
    condition     = length(var.images) > 0 && alltrue([for i in var.images : can(regex("^[a-z0-9]+([._-][a-z0-9]+)*$", i))])
    error_message = "Each image name must be lower-case letters and digits, separated by '.', '_' or '-'."
  }
}

variable "ecr_keep_images" {
  description = "Tagged images kept per repository; older ones expire (untagged ones after 14 days)."
  type        = number
  default     = 30

  validation {
    condition     = var.ecr_keep_images >= 1 && var.ecr_keep_images <= 1000
    error_message = "Keep between 1 and 1000 images per repository."
  }
}

variable "ecr_force_delete" {
  description = "Let `terraform destroy` delete repositories that still hold images. Off: destroy stops at a non-empty repository (set true for throwaway environments)."
  type        = bool
  default     = false
}

# ---------------------------------------------------------------- IoT Core

variable "iot_log_level" {
  description = "Default log level of AWS IoT Core's logs in CloudWatch."
  type        = string
  default     = "WARN"

  validation {
    condition     = contains(["DEBUG", "INFO", "WARN", "ERROR", "DISABLED"], var.iot_log_level)
    error_message = "The IoT log level must be one of DEBUG, INFO, WARN, ERROR or DISABLED."
  }
}
