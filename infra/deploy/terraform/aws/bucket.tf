# The run's bucket: versioned, Object Lock in governance mode, private, encrypted with its own KMS
# key, and a bucket policy that makes history create-only (docs/SECURITY.md, section 6).

locals {
  run = var.run_prefix
  # What cairn writes only with put-if-absent and never deletes (storage::conformance::HISTORY_PREFIXES).
  history_prefixes = ["ledger/seq/", "ledger/checkpoints/", "blobs/", "mirrors/"]
  history_objects  = [for p in local.history_prefixes : "${aws_s3_bucket.run.arn}/${local.run}/${p}*"]
}

resource "aws_s3_bucket" "run" {
  #checkov:skip=CKV_AWS_144: cross-region replication is the operator's choice; every object is checked by hash and signature on read, so a replica adds availability, not integrity
  #checkov:skip=CKV2_AWS_62: no consumer of event notifications: participants follow the ledger by listing it
  #checkov:skip=CKV_AWS_18: access logging goes to var.access_log_bucket when it is set (aws_s3_bucket_logging below); a log bucket of its own would need logging itself
  bucket              = var.bucket_name
  object_lock_enabled = true
}

resource "aws_s3_bucket_logging" "run" {
  count         = var.access_log_bucket == "" ? 0 : 1
  bucket        = aws_s3_bucket.run.id
  target_bucket = var.access_log_bucket
  target_prefix = "${var.bucket_name}/"
}

resource "aws_s3_bucket_versioning" "run" {
  bucket = aws_s3_bucket.run.id
  versioning_configuration {
    status = "Enabled"
  }
}

# Keeps every version for object_lock_days. It does not stop a new version at the same key or a
# delete marker (readers read the current version): the bucket policy below does.
resource "aws_s3_bucket_object_lock_configuration" "run" {
  bucket = aws_s3_bucket.run.id
  rule {
    default_retention {
      mode = "GOVERNANCE"
      days = var.object_lock_days
    }
  }
  depends_on = [aws_s3_bucket_versioning.run]
}

resource "aws_s3_bucket_public_access_block" "run" {
  bucket                  = aws_s3_bucket.run.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "run" {
  bucket = aws_s3_bucket.run.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "run" {
  bucket = aws_s3_bucket.run.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.run.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "run" {
  bucket = aws_s3_bucket.run.id
  # Large blobs are uploaded in parts to tmp/ and placed create-only; what a crash leaves there
  # is garbage after a day.
  rule {
    id     = "staging"
    status = "Enabled"
    filter {
      prefix = "${local.run}/tmp/"
    }
    expiration {
      days = 1
    }
  }
  # Staging objects are deleted by their writer; each delete leaves a marker over versions that
  # Object Lock keeps for object_lock_days (old-versions below then removes them). Markers
  # with no version left go too.
  rule {
    id     = "staging-markers"
    status = "Enabled"
    filter {
      prefix = "${local.run}/tmp/"
    }
    expiration {
      expired_object_delete_marker = true
    }
  }
  # Each round's step (steps/FOLDER/ROUND) is derived data for followers that joined or kept up
  # recently; one that finds none replays the round from its updates.
  rule {
    id     = "steps"
    status = "Enabled"
    filter {
      prefix = "${local.run}/steps/"
    }
    expiration {
      days = var.step_days
    }
  }
  rule {
    id     = "incomplete-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
  # Old versions of what may be replaced or deleted (ledger/head, exports/, tmp/, steps/, _cairn-check/)
  # once their lock has passed.
  rule {
    id     = "old-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.object_lock_days + 1
    }
  }
  depends_on = [aws_s3_bucket_versioning.run]
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid       = "TlsOnly"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.run.arn, "${aws_s3_bucket.run.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  # A PutObject or CompleteMultipartUpload under history without If-None-Match is refused, for
  # everyone: S3 then only creates, never replaces. CreateMultipartUpload, UploadPart and
  # UploadPartCopy take no conditional header and are let through (s3:ObjectCreationOperation).
  statement {
    sid       = "HistoryIsCreateOnly"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = local.history_objects
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Null"
      variable = "s3:if-none-match"
      values   = ["true"]
    }
    condition {
      test     = "Bool"
      variable = "s3:ObjectCreationOperation"
      values   = ["true"]
    }
  }

  statement {
    sid       = "HistoryIsNeverDeleted"
    effect    = "Deny"
    actions   = ["s3:DeleteObject", "s3:DeleteObjectVersion"]
    resources = local.history_objects
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    dynamic "condition" {
      for_each = length(var.history_deleters) == 0 ? [] : [1]
      content {
        test     = "ArnNotLike"
        variable = "aws:PrincipalArn"
        values   = var.history_deleters
      }
    }
  }
}

resource "aws_s3_bucket_policy" "run" {
  bucket     = aws_s3_bucket.run.id
  policy     = data.aws_iam_policy_document.bucket.json
  depends_on = [aws_s3_bucket_public_access_block.run]
}
