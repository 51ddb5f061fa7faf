variable "bucket" {
  description = "Name of the bucket holding the lake (lake.s3.bucket of the data-feed config)."
  type        = string
}

variable "prefix" {
  description = "Key prefix of the lake inside the bucket (lake.s3.prefix); channels live under <prefix>/<channel>/."
  type        = string
  default     = "lake"

  validation {
    condition     = length(var.prefix) > 0 && !startswith(var.prefix, "/") && !endswith(var.prefix, "/")
    error_message = "prefix: a key prefix without leading or trailing slash, e.g. \"lake\" or \"data-feed/lake\"."
  }
}

variable "retention_days" {
  description = "channel -> days, mirroring lake.retention_days of the config. Each gets an S3 expiration rule on <prefix>/<channel>/ after days + lifecycle_grace_days: a backstop behind `data-feed lake expire`, which drops the Glue partition before deleting its files."
  type        = map(number)
  default     = {}

  validation {
    condition     = alltrue([for days in values(var.retention_days) : days > 0 && floor(days) == days])
    error_message = "retention_days: every value must be a whole number of days > 0 (as the config requires)."
  }
}

variable "lifecycle_grace_days" {
  description = "Days S3 expiration waits beyond retention_days, so `data-feed lake expire` (by partition date, Glue first) always runs before S3 deletes an object of a partition Glue still lists."
  type        = number
  default     = 2
}

variable "noncurrent_version_days" {
  description = "Days a replaced or deleted object version is kept (versioning protects against an accidental delete or overwrite)."
  type        = number
  default     = 7
}

variable "abort_multipart_days" {
  description = "Days after which incomplete multipart uploads are aborted."
  type        = number
  default     = 1
}

variable "sse_algorithm" {
  description = "Default server-side encryption: aws:kms (with kms_key_arn, or the AWS managed key aws/s3 when null) or AES256."
  type        = string
  default     = "aws:kms"

  validation {
    condition     = contains(["aws:kms", "AES256"], var.sse_algorithm)
    error_message = "sse_algorithm: aws:kms or AES256."
  }
}

variable "kms_key_arn" {
  description = "KMS key for aws:kms encryption; null uses the AWS managed key aws/s3. Ignored with AES256."
  type        = string
  default     = null
}

variable "force_destroy" {
  description = "Allow terraform destroy to delete a bucket that still holds objects (every version). Keep false in production."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
