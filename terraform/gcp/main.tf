# What provision needs in a GCP project: a private bucket for image tarballs, and two service
# accounts with custom roles holding exactly the permissions the code's calls need
# (tests/gcp/test_terraform_gcp.py checks each call against them).

locals {
  bucket = var.bucket_name != "" ? var.bucket_name : "${var.name_prefix}-images-${var.project}"
}

resource "google_storage_bucket" "images" {
  project                     = var.project
  name                        = local.bucket
  location                    = var.location
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  versioning {
    enabled = true
  }

  encryption {
    default_kms_key_name = var.kms_key
  }

  logging {
    log_bucket = var.log_bucket
  }

  lifecycle_rule {
    condition {
      age            = var.tarball_retention_days
      matches_prefix = ["provision/"]
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 1
    }
    action {
      type = "Delete"
    }
  }
}

resource "google_service_account" "push" {
  project      = var.project
  account_id   = "${var.name_prefix}-push"
  display_name = "provision push gcp"
}

resource "google_service_account" "daemon" {
  project      = var.project
  account_id   = "${var.name_prefix}-daemon"
  display_name = "provision daemon (gcp target)"
}

# provision push gcp: find an image by its digest label, create it from the tarball, wait on
# the global operation, deprecate the family's older images. Never delete.
resource "google_project_iam_custom_role" "push" {
  project     = var.project
  role_id     = replace("${var.name_prefix}_push", "-", "_")
  title       = "provision push"
  description = "Create Compute Engine images from tarballs in the provision bucket; never delete."
  permissions = [
    "compute.globalOperations.get",
    "compute.images.create",
    "compute.images.deprecate",
    "compute.images.get",
    "compute.images.list",
  ]
}

# Reading back (the same-checksum check; Compute Engine reads the tarball with the caller's
# rights) and writing tarballs: on the bucket only.
resource "google_project_iam_custom_role" "push_objects" {
  project     = var.project
  role_id     = replace("${var.name_prefix}_push_objects", "-", "_")
  title       = "provision push: tarballs"
  description = "Upload and read image tarballs."
  permissions = [
    "storage.objects.create",
    "storage.objects.get",
  ]
}

# provision daemon / apply on type gcp: instances in the project, nothing else.
resource "google_project_iam_custom_role" "daemon" {
  project     = var.project
  role_id     = replace("${var.name_prefix}_daemon", "-", "_")
  title       = "provision daemon"
  description = "Create, list, read and delete instances (with their boot disks) from provision images."
  permissions = [
    "compute.disks.create",
    "compute.images.list",
    "compute.images.useReadOnly",
    "compute.instances.create",
    "compute.instances.delete",
    "compute.instances.get",
    "compute.instances.list",
    "compute.instances.setLabels",
    "compute.instances.setMetadata",
    "compute.instances.setTags",
    "compute.subnetworks.use",
    "compute.zoneOperations.get",
  ]
}

resource "google_project_iam_member" "push" {
  project = var.project
  role    = google_project_iam_custom_role.push.id
  member  = "serviceAccount:${google_service_account.push.email}"
}

resource "google_storage_bucket_iam_member" "push_objects" {
  bucket = google_storage_bucket.images.name
  role   = google_project_iam_custom_role.push_objects.id
  member = "serviceAccount:${google_service_account.push.email}"
}

resource "google_project_iam_member" "daemon" {
  project = var.project
  role    = google_project_iam_custom_role.daemon.id
  member  = "serviceAccount:${google_service_account.daemon.email}"
}
