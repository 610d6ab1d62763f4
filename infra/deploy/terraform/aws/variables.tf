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
    Each organisation of the run, by the name its roster uses: the prefix its members re-publish
    blobs under (`cairn store layout --organisation NAME` prints it), and the IAM principals (in
    the organisation's own AWS account) allowed to assume its worker, validator and admin roles.
    A role is created only for a non-empty list.
  EOT
  type = map(object({
    mirror_prefix        = string
    worker_principals    = optional(list(string), [])
    validator_principals = optional(list(string), [])
    admin_principals     = optional(list(string), [])
  }))
  validation {
    condition     = alltrue([for o in values(var.organisations) : can(regex("^mirrors/[0-9a-f]{16}$", o.mirror_prefix))])
    error_message = "mirror_prefix is mirrors/ and 16 hex digits, as `cairn store layout --organisation NAME` prints it."
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
