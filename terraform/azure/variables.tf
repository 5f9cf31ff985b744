variable "name_prefix" {
  description = "Prefix of the resource group, gallery and role names."
  type        = string
  default     = "provision"
}

variable "location" {
  description = "The Azure region of the resource group, storage account and gallery."
  type        = string
}

variable "storage_account_name" {
  description = "The storage account images are uploaded to (3-24 lower-case letters and digits, globally unique)."
  type        = string
}

variable "container_name" {
  description = "The blob container images are uploaded to."
  type        = string
  default     = "images"
}

variable "gallery_image" {
  description = "The gallery image definition (provision push azure --gallery-image)."
  type        = string
  default     = "web"
}

variable "hyper_v_generation" {
  description = "V1 or V2 (provision's VHD boots both; Trusted Launch needs V2)."
  type        = string
  default     = "V2"
}

variable "trusted_launch" {
  description = "Whether the image definition supports Trusted Launch."
  type        = bool
  default     = true
}

variable "daemon_principal_id" {
  description = "The object id the daemon runs as (a managed identity or service principal); null: no assignment."
  type        = string
  default     = null
}

variable "push_principal_id" {
  description = "The object id CI pushes images as; null: no assignment."
  type        = string
  default     = null
}

variable "allowed_ip_ranges" {
  description = "Public IP ranges (CIDR) that may reach the storage account (where pushes run from)."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags on everything created."
  type        = map(string)
  default     = {}
}
