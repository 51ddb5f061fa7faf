variable "region" {
  description = "AWS region of every resource."
  type        = string
  default     = "us-east-1"
}

variable "name" {
  description = "Name prefix of roles and the workgroup."
  type        = string
  default     = "data-feed"
}

variable "lake_bucket" {
  description = "Lake bucket name (globally unique)."
  type        = string
}

variable "results_bucket" {
  description = "Athena results bucket name (globally unique)."
  type        = string
}

variable "lake_prefix" {
  description = "lake.s3.prefix."
  type        = string
  default     = "lake"
}

variable "glue_database" {
  description = "lake.s3.database and athena.database."
  type        = string
  default     = "data_feed"
}

variable "retention_days" {
  description = "lake.retention_days of the config: channel -> days."
  type        = map(number)
  default     = {}
}

variable "bytes_scanned_cutoff_per_query" {
  description = "Athena per-query scan limit in bytes."
  type        = number
  default     = 1099511627776
}

variable "ecr_repository" {
  description = "ECR repository name of the image."
  type        = string
  default     = "data-feed"
}

variable "oidc_provider_arn" {
  description = "ARN of the cluster's IAM OIDC provider."
  type        = string
}

variable "oidc_provider_url" {
  description = "Issuer URL of the cluster's OIDC provider."
  type        = string
}

variable "namespace" {
  description = "Kubernetes namespace of the release."
  type        = string
  default     = "data-feed"
}

variable "force_destroy" {
  description = "Let destroy delete buckets holding objects and the repository holding images (tests; never in production)."
  type        = bool
  default     = false
}

variable "endpoints" {
  description = "Override AWS endpoints (a local moto server: every one the same URL); null = AWS."
  type = object({
    s3     = optional(string)
    glue   = optional(string)
    athena = optional(string)
    iam    = optional(string)
    sts    = optional(string)
    ecr    = optional(string)
  })
  default = null
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = { "app.kubernetes.io/part-of" = "data-feed" }
}
