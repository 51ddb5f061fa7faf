output "bucket" {
  description = "Bucket name (lake.s3.bucket)."
  value       = aws_s3_bucket.lake.id
}

output "bucket_arn" {
  description = "Bucket ARN."
  value       = aws_s3_bucket.lake.arn
}

output "prefix" {
  description = "Key prefix of the lake (lake.s3.prefix)."
  value       = var.prefix
}

output "lake_uri" {
  description = "s3://bucket/prefix of the lake."
  value       = "s3://${aws_s3_bucket.lake.id}/${var.prefix}"
}
