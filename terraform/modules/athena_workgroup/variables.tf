variable "name" {
  description = "Athena workgroup name (athena.workgroup of the config)."
  type        = string
  default     = "data-feed"
}

variable "results_bucket" {
  description = "Name of the bucket this module creates for query results."
  type        = string
}

variable "results_prefix" {
  description = "Key prefix of query results inside the results bucket."
  type        = string
  default     = "results"
}

variable "results_retention_days" {
  description = "Days query results are kept."
  type        = number
  default     = 30
}

variable "bytes_scanned_cutoff_per_query" {
  description = "Athena cancels a query of this workgroup once it has scanned this many bytes (minimum 10 MB). Default 1 TiB."
  type        = number
  default     = 1099511627776

  validation {
    condition     = var.bytes_scanned_cutoff_per_query >= 10485760
    error_message = "bytes_scanned_cutoff_per_query: Athena's minimum is 10485760 (10 MB)."
  }
}

variable "encryption" {
  description = "Encryption of query results and of the results bucket: SSE_KMS (with kms_key_arn, required by Athena for SSE_KMS) or SSE_S3."
  type        = string
  default     = "SSE_S3"

  validation {
    condition     = contains(["SSE_KMS", "SSE_S3"], var.encryption)
    error_message = "encryption: SSE_KMS or SSE_S3."
  }
}

variable "kms_key_arn" {
  description = "KMS key for SSE_KMS."
  type        = string
  default     = null
}

variable "force_destroy" {
  description = "Allow destroy to delete the results bucket with its objects and the workgroup with its saved queries."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
