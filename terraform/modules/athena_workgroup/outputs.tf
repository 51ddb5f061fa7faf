output "workgroup" {
  description = "Athena workgroup name (athena.workgroup)."
  value       = aws_athena_workgroup.lake.name
}

output "workgroup_arn" {
  description = "Athena workgroup ARN."
  value       = aws_athena_workgroup.lake.arn
}

output "results_bucket" {
  description = "Bucket of query results."
  value       = aws_s3_bucket.results.id
}

output "results_bucket_arn" {
  description = "ARN of the bucket of query results."
  value       = aws_s3_bucket.results.arn
}

output "results_prefix" {
  description = "Key prefix of query results."
  value       = var.results_prefix
}
