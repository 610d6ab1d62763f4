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
  name          = "alias/cairn-${replace(var.bucket_name, ".", "-")}"
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

  # Every organisation and kind, then one role for each that has principals or subjects.
  member_candidates = merge([
    for org, o in var.organisations : {
      for kind, who in {
        worker    = { principals = o.worker_principals, subjects = try(o.web_identity.worker_subjects, []) }
        validator = { principals = o.validator_principals, subjects = try(o.web_identity.validator_subjects, []) }
        admin     = { principals = o.admin_principals, subjects = try(o.web_identity.admin_subjects, []) }
      } : "${org}-${kind}" => {
        org        = org
        kind       = kind
        folder     = o.folder
        principals = who.principals
        subjects   = who.subjects
        provider   = try(o.web_identity.provider_arn, "")
      }
    }
  ]...)
  member_roles = { for k, r in local.member_candidates : k => r if length(r.principals) > 0 || length(r.subjects) > 0 }
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

  # History: create-only by the bucket policy. Workers and validators re-publish blobs under
  # their own organisation's mirror only; admins under none. `cairn store check` probes
  # mirrors/_cairn-probe-* (create-only too).
  statement {
    sid     = "AppendHistory"
    actions = ["s3:PutObject"]
    resources = concat(
      ["${local.run_arn}/ledger/seq/*", "${local.run_arn}/ledger/checkpoints/*", "${local.run_arn}/blobs/*",
      "${local.run_arn}/mirrors/_cairn-probe-*"],
      each.value.kind == "admin" ? [] : ["${local.run_arn}/mirrors/${each.value.folder}/*"],
    )
  }
  # Replaceable: the head hint, Parquet exports, the store check's scratch, large uploads staged
  # in the organisation's own folder (no other organisation can replace a staged upload before
  # its create-only copy to blobs/, docs/SECURITY.md row 38), and for workers and validators the
  # rounds' steps in the organisation's own folder (row 46).
  statement {
    sid     = "WriteDerived"
    actions = ["s3:PutObject"]
    resources = concat(
      ["${local.run_arn}/ledger/head", "${local.run_arn}/exports/*", "${local.run_arn}/_cairn-check/*",
      "${local.run_arn}/tmp/${each.value.folder}/*"],
      each.value.kind == "admin" ? [] : ["${local.run_arn}/steps/${each.value.folder}/*"],
    )
  }
  statement {
    sid       = "CleanUpStaging"
    actions   = ["s3:DeleteObject"]
    resources = ["${local.run_arn}/tmp/${each.value.folder}/*", "${local.run_arn}/_cairn-check/*"]
  }
  # A large blob is placed at blobs/<hex> by a multipart copy; a failed one is aborted.
  statement {
    sid       = "AbortUploads"
    actions   = ["s3:AbortMultipartUpload"]
    resources = ["${local.run_arn}/tmp/${each.value.folder}/*", "${local.run_arn}/blobs/*"]
  }
  statement {
    sid       = "EncryptTheRun"
    actions   = ["kms:GenerateDataKey"]
    resources = [aws_kms_key.run.arn]
  }
}

data "aws_iam_policy_document" "assume" {
  for_each = merge(local.member_roles, length(var.auditor_principals) > 0 ? {
    auditor = { principals = var.auditor_principals, provider = "", subjects = [] }
  } : {})
  dynamic "statement" {
    for_each = length(each.value.principals) > 0 ? [1] : []
    content {
      sid     = "AssumeRole"
      actions = ["sts:AssumeRole"]
      principals {
        type        = "AWS"
        identifiers = each.value.principals
      }
    }
  }
  dynamic "statement" {
    for_each = length(each.value.subjects) > 0 ? [1] : []
    content {
      sid     = "WebIdentity"
      actions = ["sts:AssumeRoleWithWebIdentity"]
      principals {
        type        = "Federated"
        identifiers = [each.value.provider]
      }
      condition {
        test     = "StringEquals"
        variable = "${split("oidc-provider/", each.value.provider)[1]}:sub"
        values   = each.value.subjects
      }
      condition {
        test     = "StringEquals"
        variable = "${split("oidc-provider/", each.value.provider)[1]}:aud"
        values   = ["sts.amazonaws.com"]
      }
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
