variable "project" {
  description = "The GCP project images are pushed to and instances run in."
  type        = string
}

variable "name_prefix" {
  description = "Prefix of every name this module creates (service accounts, roles, bucket)."
  type        = string
  default     = "provision"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,16}$", var.name_prefix))
    error_message = "Lower-case letters, digits and dashes, 3 to 17 characters, starting with a letter."
  }
}

variable "bucket_name" {
  description = "Name of the bucket the image tarballs are uploaded to (default: NAME_PREFIX-images-PROJECT)."
  type        = string
  default     = ""
}

variable "location" {
  description = "Where the bucket lives (a region or multi-region); a region near the images' users keeps imports fast."
  type        = string
  default     = "US"
}

variable "tarball_retention_days" {
  description = "Days an uploaded tarball is kept (Compute Engine copies it into the image; a re-push of the same digest reuses the image, not the tarball)."
  type        = number
  default     = 7
}

variable "log_bucket" {
  description = "An existing bucket that receives the image bucket's access logs."
  type        = string
}

variable "kms_key" {
  description = "A Cloud KMS key (projects/.../cryptoKeys/...) that encrypts the bucket's objects."
  type        = string
}
