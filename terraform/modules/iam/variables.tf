variable "name_prefix" {
  description = "Prefix of role and policy names: <name_prefix>-writer, -compactor, -reader."
  type        = string
  default     = "data-feed"
}

variable "lake_bucket_arn" {
  description = "ARN of the lake bucket."
  type        = string
}

variable "lake_prefix" {
  description = "Key prefix of the lake (lake.s3.prefix): every S3 grant is limited to it."
  type        = string
}

variable "glue_database" {
  description = "Glue database of the lake."
  type        = string
}

variable "results_bucket_arn" {
  description = "ARN of the Athena results bucket."
  type        = string
}

variable "results_prefix" {
  description = "Key prefix of query results in the results bucket."
  type        = string
}

variable "athena_workgroup_arn" {
  description = "ARN of the Athena workgroup the reader may query through."
  type        = string
}

variable "kms_key_arns" {
  description = "KMS keys encrypting the lake and the results (customer-managed keys only; the AWS managed keys need no grant)."
  type        = list(string)
  default     = []
}

variable "reader_direct_s3" {
  description = "false: the reader role reads lake objects only through Athena (aws:CalledVia athena.amazonaws.com). true: it may also read them directly (data-feed query with the DuckDB engine on S3)."
  type        = bool
  default     = false
}

variable "oidc_provider_arn" {
  description = "ARN of the cluster's IAM OIDC provider (EKS: arn:aws:iam::<account>:oidc-provider/oidc.eks.<region>.amazonaws.com/id/<id>)."
  type        = string
}

variable "oidc_provider_url" {
  description = "Issuer URL of the cluster's OIDC provider, with or without https://."
  type        = string
}

variable "namespace" {
  description = "Kubernetes namespace of the data-feed release."
  type        = string
  default     = "data-feed"
}

variable "service_accounts" {
  description = "Kubernetes service accounts allowed to assume each role (IRSA)."
  type = object({
    writer    = list(string)
    compactor = list(string)
    reader    = list(string)
  })
  default = {
    writer    = ["data-feed-writer"]
    compactor = ["data-feed-compactor"]
    reader    = ["data-feed-reader"]
  }
}

variable "max_session_seconds" {
  description = "Maximum session duration of the roles."
  type        = number
  default     = 3600
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
