variable "region" {
  description = "AWS region of the run's bucket."
  type        = string
}

variable "bucket_name" {
  description = "The run's bucket (globally unique). Members reach it as s3://BUCKET/RUN_PREFIX."
  type        = string
}

variable "run_prefix" {
  description = "The run's prefix inside the bucket (one run per prefix), without slashes."
  type        = string
  default     = "run1"
  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._-]*$", var.run_prefix))
    error_message = "run_prefix is one path segment: letters, digits, '.', '_', '-'."
  }
}

variable "organisations" {
  description = <<-EOT
    Each organisation of the run, by the name its roster uses:
      folder: its folder in the bucket, as `cairn store layout --organisation NAME` prints it (the
        first 16 hex digits of blake3 of the name): its members re-publish blobs under
        mirrors/FOLDER/ and stage large uploads under tmp/FOLDER/, which no other organisation's
        role may write;
      *_principals: IAM principals allowed to assume its worker, validator and admin roles with
        sts:AssumeRole (people and short jobs: genesis, store check; the session credentials last
        at most an hour and cairn does not refresh them);
      web_identity: for long-running members (workers, validators), an IAM OIDC provider (an EKS
        cluster's, registered in this account) and the service-account subjects of each kind, for
        sts:AssumeRoleWithWebIdentity, which cairn's S3 client refreshes on its own.
    A role is created for each kind with principals or subjects.
  EOT
  type = map(object({
    folder               = string
    worker_principals    = optional(list(string), [])
    validator_principals = optional(list(string), [])
    admin_principals     = optional(list(string), [])
    web_identity = optional(object({
      provider_arn       = string
      worker_subjects    = optional(list(string), [])
      validator_subjects = optional(list(string), [])
      admin_subjects     = optional(list(string), [])
    }))
  }))
  validation {
    condition     = alltrue([for o in values(var.organisations) : can(regex("^[0-9a-f]{16}$", o.folder))])
    error_message = "folder is 16 hex digits, as `cairn store layout --organisation NAME` prints it."
  }
  validation {
    condition     = alltrue([for name in keys(var.organisations) : can(regex("^[A-Za-z0-9_+=,.@-]{1,32}$", name))])
    error_message = "Organisation names become part of IAM role names: 1 to 32 of A-Z a-z 0-9 _+=,.@- (the roster may use others; use a short alias here)."
  }
}

variable "auditor_principals" {
  description = "IAM principals allowed to assume the read-only auditor role (auditors, dashboards)."
  type        = list(string)
  default     = []
}

variable "object_lock_days" {
  description = "Default Object Lock retention (governance mode) of every object version, in days."
  type        = number
  default     = 30
}

variable "step_days" {
  description = "Days a round's published step (steps/) is kept; a follower that finds none replays the round from its updates."
  type        = number
  default     = 7
}

variable "history_deleters" {
  description = <<-EOT
    Principal ARNs exempt from the bucket policy's ban on deleting history: whoever may run
    `cairn gc --delete` (docs/AUDIT.md). Empty (the default): nobody may delete history.
  EOT
  type        = list(string)
  default     = []
}

variable "access_log_bucket" {
  description = "A bucket that receives this bucket's S3 server access logs (empty: no access logs)."
  type        = string
  default     = ""
}
