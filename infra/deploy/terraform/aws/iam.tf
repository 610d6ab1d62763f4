# The run's KMS key and its IAM roles: per organisation a worker, a validator and an admin role
# (each assumed by that organisation's own principals), and one read-only auditor role.
#
# What members write (docs/DEPLOY.md, "Least privilege"): history (ledger slots, checkpoint
# signatures, blobs, their organisation's mirror) only through the bucket policy's create-only
# rule; the ledger's head hint, Parquet exports, tmp/ staging and the store check's scratch space
# freely. Which member wrote which slot is not for IAM to say: every entry is signed, and the
# ledger voids what a key may not write (docs/LEDGER.md).

data "aws_caller_identity" "current" {}

resource "aws_kms_key" "run" {
  description         = "cairn run ${var.bucket_name}/${var.run_prefix}: encryption of its objects"
  enable_key_rotation = true
  policy              = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "run" {
  name          = "alias/cairn-${var.bucket_name}"
  target_key_id = aws_kms_key.run.key_id
}

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_111: in a key policy the resource "*" is this key alone; the account administers it, as in AWS's default key policy
  #checkov:skip=CKV_AWS_356: in a key policy the resource "*" is this key alone
  #checkov:skip=CKV_AWS_109: the account's own root administers its key, as in AWS's default key policy; members get use of it through their roles
  # The account administers the key; the roles below get use of it through their own policies.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
}

locals {
  bucket_arn = aws_s3_bucket.run.arn
  run_arn    = "${aws_s3_bucket.run.arn}/${var.run_prefix}"

  # One role per organisation and kind that has principals.
  member_roles = merge([
    for org, o in var.organisations : {
      for kind, principals in {
        worker    = o.worker_principals
        validator = o.validator_principals
        admin     = o.admin_principals
      } : "${org}-${kind}" => { org = org, kind = kind, principals = principals, mirror = o.mirror_prefix }
      if length(principals) > 0
    }
  ]...)
}

data "aws_iam_policy_document" "read" {
  statement {
    sid       = "ListTheRun"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.run_prefix}/*"]
    }
  }
  statement {
    sid       = "ReadTheRun"
    actions   = ["s3:GetObject"]
    resources = ["${local.run_arn}/*"]
  }
  statement {
    sid       = "DecryptTheRun"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.run.arn]
  }
}

data "aws_iam_policy_document" "member" {
  for_each                = local.member_roles
  source_policy_documents = [data.aws_iam_policy_document.read.json]

  # History: create-only by the bucket policy. Admins write no mirror (they hold no blobs to
  # re-publish); workers and validators write their own organisation's only.
  statement {
    sid     = "AppendHistory"
    actions = ["s3:PutObject"]
    resources = concat(
      ["${local.run_arn}/ledger/seq/*", "${local.run_arn}/ledger/checkpoints/*", "${local.run_arn}/blobs/*"],
      each.value.kind == "admin" ? [] : ["${local.run_arn}/${each.value.mirror}/*"],
    )
  }
  # Replaceable: the head hint, Parquet exports, staging of large blobs, the store check's scratch.
  statement {
    sid       = "WriteDerived"
    actions   = ["s3:PutObject"]
    resources = ["${local.run_arn}/ledger/head", "${local.run_arn}/exports/*", "${local.run_arn}/tmp/*", "${local.run_arn}/_cairn-check/*"]
  }
  statement {
    sid       = "CleanUpStaging"
    actions   = ["s3:DeleteObject"]
    resources = ["${local.run_arn}/tmp/*", "${local.run_arn}/_cairn-check/*"]
  }
  # A large blob is placed at blobs/<hex> by a multipart copy; a failed one is aborted.
  statement {
    sid       = "AbortUploads"
    actions   = ["s3:AbortMultipartUpload"]
    resources = ["${local.run_arn}/tmp/*", "${local.run_arn}/blobs/*"]
  }
  statement {
    sid       = "EncryptTheRun"
    actions   = ["kms:GenerateDataKey"]
    resources = [aws_kms_key.run.arn]
  }
}

data "aws_iam_policy_document" "assume" {
  for_each = merge(local.member_roles, length(var.auditor_principals) > 0 ? { auditor = { principals = var.auditor_principals } } : {})
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "AWS"
      identifiers = each.value.principals
    }
  }
}

resource "aws_iam_role" "member" {
  for_each           = local.member_roles
  name               = "cairn-${var.run_prefix}-${each.key}"
  description        = "cairn run ${var.bucket_name}/${var.run_prefix}: ${each.value.kind} of ${each.value.org}"
  assume_role_policy = data.aws_iam_policy_document.assume[each.key].json
}

resource "aws_iam_role_policy" "member" {
  for_each = local.member_roles
  name     = "cairn-run"
  role     = aws_iam_role.member[each.key].id
  policy   = data.aws_iam_policy_document.member[each.key].json
}

resource "aws_iam_role" "auditor" {
  count              = length(var.auditor_principals) > 0 ? 1 : 0
  name               = "cairn-${var.run_prefix}-auditor"
  description        = "cairn run ${var.bucket_name}/${var.run_prefix}: read-only auditor"
  assume_role_policy = data.aws_iam_policy_document.assume["auditor"].json
}

resource "aws_iam_role_policy" "auditor" {
  count  = length(var.auditor_principals) > 0 ? 1 : 0
  name   = "cairn-run-read-only"
  role   = aws_iam_role.auditor[0].id
  policy = data.aws_iam_policy_document.read.json
}
