# The lake bucket: Hive-partitioned parquet under <prefix>/<channel>/exchange=/symbol=/date=/ (data_feed.lake.s3).
# Private (public access blocked, bucket-owner-enforced ownership: no ACLs), versioned, encrypted by default.

resource "aws_s3_bucket" "lake" {
  #checkov:skip=CKV_AWS_18:access logging needs a separate log bucket the operator already runs; pass it with aws_s3_bucket_logging outside this module
  #checkov:skip=CKV_AWS_144:cross-region replication doubles storage cost; the lake is rebuilt from the exchanges' history only in part, so replicate where the operator decides, not by default
  #checkov:skip=CKV2_AWS_62:no consumer of S3 event notifications: the aggregator registers every partition in Glue itself
  bucket        = var.bucket
  force_destroy = var.force_destroy
  tags          = var.tags
}

resource "aws_s3_bucket_ownership_controls" "lake" {
  bucket = aws_s3_bucket.lake.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "lake" {
  bucket                  = aws_s3_bucket.lake.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "lake" {
  bucket = aws_s3_bucket.lake.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "lake" {
  bucket = aws_s3_bucket.lake.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.sse_algorithm
      kms_master_key_id = var.sse_algorithm == "aws:kms" ? var.kms_key_arn : null
    }
    bucket_key_enabled = var.sse_algorithm == "aws:kms"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "lake" {
  bucket = aws_s3_bucket.lake.id

  # Whole bucket: old versions of replaced or deleted objects (compaction and retention delete files), delete
  # markers left alone, and abandoned multipart uploads.
  rule {
    id     = "noncurrent-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }
    expiration {
      expired_object_delete_marker = true
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_multipart_days
    }
  }

  # One rule per channel of lake.retention_days, on that channel's prefix only.
  dynamic "rule" {
    for_each = var.retention_days
    content {
      id     = "retention-${rule.key}"
      status = "Enabled"
      filter {
        prefix = "${var.prefix}/${rule.key}/"
      }
      expiration {
        days = rule.value + var.lifecycle_grace_days
      }
    }
  }

  depends_on = [aws_s3_bucket_versioning.lake]
}
