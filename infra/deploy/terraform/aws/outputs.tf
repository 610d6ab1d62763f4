output "store_url" {
  description = "The run's store URL, for every cairn command."
  value       = "s3://${aws_s3_bucket.run.bucket}/${var.run_prefix}"
}

output "member_role_arns" {
  description = "The role each organisation's workers, validators and admins assume, by ORG-KIND."
  value       = { for k, r in aws_iam_role.member : k => r.arn }
}

output "auditor_role_arn" {
  description = "The read-only role of auditors and dashboards (null without auditor_principals)."
  value       = length(aws_iam_role.auditor) > 0 ? aws_iam_role.auditor[0].arn : null
}
