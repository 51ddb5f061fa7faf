# The Athena workgroup of the lake: its own private, encrypted results bucket, settings every query of the
# workgroup must use (enforce_workgroup_configuration), and a per-query cutoff on bytes scanned.

locals {
  kms = var.encryption == "SSE_KMS"
}

resource "aws_s3_bucket" "results" {
  #checkov:skip=CKV_AWS_18:query results are short-lived, regenerable outputs; Athena's own CloudTrail events record who queried
  #checkov:skip=CKV_AWS_144:query results are regenerable; replicating them has no value
  #checkov:skip=CKV2_AWS_62:nothing consumes events of query results
  bucket        = var.results_bucket
  force_destroy = var.force_destroy
  tags          = var.tags
}

resource "aws_s3_bucket_ownership_controls" "results" {
  bucket = aws_s3_bucket.results.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "results" {
  bucket                  = aws_s3_bucket.results.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "results" {
  bucket = aws_s3_bucket.results.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "results" {
  bucket = aws_s3_bucket.results.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = local.kms ? "aws:kms" : "AES256"
      kms_master_key_id = local.kms ? var.kms_key_arn : null
    }
    bucket_key_enabled = local.kms
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "results" {
  bucket = aws_s3_bucket.results.id
  rule {
    id     = "expire-results"
    status = "Enabled"
    filter {}
    expiration {
      days = var.results_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
  depends_on = [aws_s3_bucket_versioning.results]
}

resource "aws_athena_workgroup" "lake" {
  name          = var.name
  description   = "data-feed lake queries"
  force_destroy = var.force_destroy
  tags          = var.tags

  configuration {
    enforce_workgroup_configuration    = true
    publish_cloudwatch_metrics_enabled = true
    bytes_scanned_cutoff_per_query     = var.bytes_scanned_cutoff_per_query

    result_configuration {
      output_location = "s3://${aws_s3_bucket.results.id}/${var.results_prefix}/"
      encryption_configuration {
        encryption_option = var.encryption
        kms_key_arn       = local.kms ? var.kms_key_arn : null
      }
    }
  }
}
