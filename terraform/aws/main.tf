# What `provision push aws` and the cluster daemon need in an AWS account: two IAM policies
# (push, daemon) and, only when the import method is enabled, the S3 bucket and the vmimport
# service role ImportSnapshot needs. See terraform/README.md.

terraform {
  required_version = ">= 1.3"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

data "aws_partition" "current" {}
data "aws_caller_identity" "current" {}

locals {
  partition   = data.aws_partition.current.partition
  account     = data.aws_caller_identity.current.account_id
  ec2         = "arn:${local.partition}:ec2:*"
  bucket_name = var.import_bucket_name != "" ? var.import_bucket_name : "${var.name_prefix}-import-${local.account}"
  kms_key_arn = var.kms_key_arn != "" ? var.kms_key_arn : (var.enable_import ? aws_kms_key.import[0].arn : "")
}

# ---------------------------------------------------------------------------- push

data "aws_iam_policy_document" "push" {
  statement {
    sid = "EbsDirectUpload"
    actions = [
      "ebs:StartSnapshot",
      "ebs:PutSnapshotBlock",
      "ebs:CompleteSnapshot",
      "ebs:ListSnapshotBlocks",
      "ebs:ListChangedBlocks",
      "ebs:GetSnapshotBlock",
    ]
    resources = ["${local.ec2}::snapshot/*"]
  }

  statement {
    sid       = "RegisterCopyAndShareImages"
    actions   = ["ec2:RegisterImage", "ec2:CopyImage", "ec2:ModifyImageAttribute"]
    resources = ["${local.ec2}::image/*", "${local.ec2}::snapshot/*"]
  }

  statement {
    sid       = "ShareAndCleanUpSnapshots"
    actions   = ["ec2:ModifySnapshotAttribute", "ec2:DeleteSnapshot"]
    resources = ["${local.ec2}::snapshot/*"]
    condition {
      test     = "Null"
      variable = "ec2:ResourceTag/provision-image-digest"
      values   = ["false"]
    }
  }

  statement {
    sid       = "TagImagesAndSnapshots"
    actions   = ["ec2:CreateTags"]
    resources = ["${local.ec2}::image/*", "${local.ec2}::snapshot/*"]
  }

  statement {
    sid       = "ReadShares" # --share-with looks before it adds (launch and create-volume permissions)
    actions   = ["ec2:DescribeImageAttribute", "ec2:DescribeSnapshotAttribute"]
    resources = ["${local.ec2}::image/*", "${local.ec2}::snapshot/*"]
  }

  statement {
    sid       = "FindWhatIsPublished"
    actions   = ["ec2:DescribeImages", "ec2:DescribeSnapshots", "ec2:DescribeTags"]
    resources = ["*"] # Describe* cannot be limited to resources
  }

  statement {
    sid       = "ReadShares"
    actions   = ["ec2:DescribeImageAttribute", "ec2:DescribeSnapshotAttribute"]
    resources = ["${local.ec2}::image/*", "${local.ec2}::snapshot/*"]
  }

  dynamic "statement" {
    for_each = var.enable_import ? [1] : []
    content {
      sid       = "ImportUpload"
      actions   = ["s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
      resources = ["arn:${local.partition}:s3:::${local.bucket_name}/*"]
    }
  }

  dynamic "statement" {
    for_each = var.enable_import ? [1] : []
    content {
      sid       = "ImportBucket"
      actions   = ["s3:ListBucket", "s3:ListBucketMultipartUploads"]
      resources = ["arn:${local.partition}:s3:::${local.bucket_name}"]
    }
  }

  dynamic "statement" {
    for_each = var.enable_import ? [1] : []
    content {
      sid       = "ImportSnapshot"
      actions   = ["ec2:ImportSnapshot"]
      resources = ["${local.ec2}::snapshot/*", "${local.ec2}:*:import-snapshot-task/*"]
    }
  }

  dynamic "statement" {
    for_each = var.enable_import ? [1] : []
    content {
      sid       = "WatchImports"
      actions   = ["ec2:DescribeImportSnapshotTasks"]
      resources = ["*"] # Describe* cannot be limited to resources
    }
  }

  dynamic "statement" {
    for_each = var.enable_import && local.kms_key_arn != "" ? [1] : []
    content {
      sid       = "ImportBucketKey"
      actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
      resources = [local.kms_key_arn]
    }
  }
}

resource "aws_iam_policy" "push" {
  name        = "${var.name_prefix}-push"
  description = "provision push aws: EBS direct upload, RegisterImage, tags, copy, share"
  policy      = data.aws_iam_policy_document.push.json
  tags        = var.tags
}

# ---------------------------------------------------------------------------- daemon

data "aws_iam_policy_document" "daemon" {
  # RunInstances creates the instance and its volumes: only with every ownership tag, and
  # only for the clusters named here (tags at launch: the provider never tags afterwards).
  statement {
    sid       = "LaunchOwnedInstances"
    actions   = ["ec2:RunInstances"]
    resources = ["${local.ec2}:${local.account}:instance/*", "${local.ec2}:${local.account}:volume/*"]
    condition {
      test     = "StringEquals"
      variable = "aws:RequestTag/provision-cluster"
      values   = var.clusters
    }
    condition {
      test     = "Null"
      variable = "aws:RequestTag/provision-group"
      values   = ["false"]
    }
    condition {
      test     = "Null"
      variable = "aws:RequestTag/provision-slot"
      values   = ["false"]
    }
  }

  # The other resources a launch names: it uses them, it creates none of them.
  statement {
    sid     = "LaunchFrom"
    actions = ["ec2:RunInstances"]
    resources = [
      "${local.ec2}::image/*",
      "${local.ec2}::snapshot/*",
      "${local.ec2}:${local.account}:subnet/*",
      "${local.ec2}:${local.account}:network-interface/*",
      "${local.ec2}:${local.account}:security-group/*",
      "${local.ec2}:${local.account}:key-pair/*",
    ]
  }

  statement {
    sid       = "TagAtLaunchOnly"
    actions   = ["ec2:CreateTags"]
    resources = ["${local.ec2}:${local.account}:instance/*", "${local.ec2}:${local.account}:volume/*"]
    condition {
      test     = "StringEquals"
      variable = "ec2:CreateAction"
      values   = ["RunInstances"]
    }
  }

  statement {
    sid       = "TerminateOwnedInstances"
    actions   = ["ec2:TerminateInstances"]
    resources = ["${local.ec2}:${local.account}:instance/*"]
    condition {
      test     = "StringEquals"
      variable = "ec2:ResourceTag/provision-cluster"
      values   = var.clusters
    }
  }

  statement {
    sid       = "ListInstances"
    actions   = ["ec2:DescribeInstances"]
    resources = ["*"] # Describe* cannot be limited to resources
  }

  dynamic "statement" {
    for_each = length(var.instance_role_arns) > 0 ? [1] : []
    content {
      sid       = "PassInstanceRoles"
      actions   = ["iam:PassRole"]
      resources = var.instance_role_arns
      condition {
        test     = "StringEquals"
        variable = "iam:PassedToService"
        values   = ["ec2.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_policy" "daemon" {
  name        = "${var.name_prefix}-daemon"
  description = "provision daemon: launch and terminate instances of ${join(", ", var.clusters)} only"
  policy      = data.aws_iam_policy_document.daemon.json
  tags        = var.tags
}

# ---------------------------------------------------------------------------- import (optional)

resource "aws_kms_key" "import" {
  #checkov:skip=CKV2_AWS_64:AWS's default key policy is the intended one (the account administers the key, IAM policies grant its use); written out it is kms:* on "*", which CKV_AWS_109/111/356 flag
  count                   = var.enable_import && var.kms_key_arn == "" ? 1 : 0
  description             = "${var.name_prefix}: the import bucket's disks"
  enable_key_rotation     = true
  deletion_window_in_days = 7 # no policy: AWS's default key policy (the account administers it)
  tags                    = var.tags
}

resource "aws_s3_bucket" "import" {
  #checkov:skip=CKV_AWS_18:access logs need a second bucket; uploads are short-lived disks already logged by CloudTrail
  #checkov:skip=CKV_AWS_144:cross-region replication of disks that live until their import completes buys nothing
  #checkov:skip=CKV2_AWS_62:nothing reacts to uploads; push polls ImportSnapshot itself
  count         = var.enable_import ? 1 : 0
  bucket        = local.bucket_name
  force_destroy = true
  tags          = var.tags
}

resource "aws_s3_bucket_public_access_block" "import" {
  count                   = var.enable_import ? 1 : 0
  bucket                  = aws_s3_bucket.import[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "import" {
  count  = var.enable_import ? 1 : 0
  bucket = aws_s3_bucket.import[0].id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "import" {
  count  = var.enable_import ? 1 : 0
  bucket = aws_s3_bucket.import[0].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = local.kms_key_arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "import" {
  count  = var.enable_import ? 1 : 0
  bucket = aws_s3_bucket.import[0].id
  rule {
    id     = "uploaded-disks-expire"
    status = "Enabled"
    filter {}
    expiration {
      days = var.import_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

data "aws_iam_policy_document" "vmimport_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["vmie.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "sts:Externalid"
      values   = ["vmimport"]
    }
  }
}

# ImportSnapshot looks for a role named exactly "vmimport".
resource "aws_iam_role" "vmimport" {
  count              = var.enable_import ? 1 : 0
  name               = "vmimport"
  assume_role_policy = data.aws_iam_policy_document.vmimport_trust.json
  tags               = var.tags
}

data "aws_iam_policy_document" "vmimport" {
  statement {
    sid       = "ReadUploadedDisks"
    actions   = ["s3:GetBucketLocation", "s3:GetObject", "s3:ListBucket"]
    resources = ["arn:${local.partition}:s3:::${local.bucket_name}", "arn:${local.partition}:s3:::${local.bucket_name}/*"]
  }
  statement {
    sid       = "WriteSnapshots"
    actions   = ["ec2:ModifySnapshotAttribute", "ec2:CopySnapshot", "ec2:RegisterImage"]
    resources = ["${local.ec2}::snapshot/*", "${local.ec2}::image/*"]
  }
  statement {
    sid       = "Describe"
    actions   = ["ec2:DescribeImages", "ec2:DescribeSnapshots", "ec2:DescribeImportSnapshotTasks"]
    resources = ["*"] # Describe* cannot be limited to resources
  }
  dynamic "statement" {
    for_each = local.kms_key_arn != "" ? [1] : []
    content {
      sid       = "DecryptUploadedDisks"
      actions   = ["kms:Decrypt"]
      resources = [local.kms_key_arn]
    }
  }
}

resource "aws_iam_role_policy" "vmimport" {
  count  = var.enable_import ? 1 : 0
  name   = "vmimport"
  role   = aws_iam_role.vmimport[0].id
  policy = data.aws_iam_policy_document.vmimport.json
}
