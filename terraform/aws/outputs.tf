output "push_policy_arn" {
  description = "Attach to whoever runs `provision push aws` (a CI role, a user)."
  value       = aws_iam_policy.push.arn
}

output "daemon_policy_arn" {
  description = "Attach to whoever runs `provision apply` / `provision daemon` for var.clusters."
  value       = aws_iam_policy.daemon.arn
}

output "push_policy_json" {
  description = "The push policy document."
  value       = data.aws_iam_policy_document.push.json
}

output "daemon_policy_json" {
  description = "The daemon policy document."
  value       = data.aws_iam_policy_document.daemon.json
}

output "import_bucket" {
  description = "The bucket for --method import (--bucket), or null when import is disabled."
  value       = var.enable_import ? aws_s3_bucket.import[0].bucket : null
}

output "vmimport_role_arn" {
  description = "The vmimport service role ImportSnapshot uses, or null when import is disabled."
  value       = var.enable_import ? aws_iam_role.vmimport[0].arn : null
}
