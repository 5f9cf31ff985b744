output "bucket" {
  description = "The bucket for `provision push gcp --bucket` and the gcp target's options.bucket."
  value       = google_storage_bucket.images.name
}

output "push_service_account" {
  description = "The service account CI pushes images as."
  value       = google_service_account.push.email
}

output "daemon_service_account" {
  description = "The service account provision daemon runs as."
  value       = google_service_account.daemon.email
}
