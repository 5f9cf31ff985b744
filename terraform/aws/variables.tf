variable "name_prefix" {
  description = "Prefix of every name this module creates (policies, role, bucket)."
  type        = string
  default     = "provision"
}

variable "clusters" {
  description = "The cluster names (the provision-cluster tag) the daemon may launch and terminate instances for."
  type        = list(string)

  validation {
    condition     = length(var.clusters) > 0 && alltrue([for c in var.clusters : can(regex("^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$", c))])
    error_message = "Name at least one cluster; each a lower-case cluster name as in the cluster spec."
  }
}

variable "instance_role_arns" {
  description = "IAM roles the daemon may pass to instances (the roles of the instance profiles that groups name in iamInstanceProfile). Empty: none."
  type        = list(string)
  default     = []
}

variable "enable_import" {
  description = "Also allow `provision push aws --method import` (S3 upload + ImportSnapshot): creates the bucket and the vmimport service role."
  type        = bool
  default     = false
}

variable "import_bucket_name" {
  description = "Name of the S3 bucket for --method import (default: NAME_PREFIX-import-ACCOUNT_ID)."
  type        = string
  default     = ""
}

variable "import_retention_days" {
  description = "Days an uploaded disk stays in the import bucket (it is only needed until ImportSnapshot completes)."
  type        = number
  default     = 7
}

variable "kms_key_arn" {
  description = "KMS key that encrypts the import bucket (default: one this module creates, with rotation)."
  type        = string
  default     = ""
}

variable "tags" {
  description = "Tags on everything this module creates."
  type        = map(string)
  default     = {}
}
