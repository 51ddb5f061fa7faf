# Everything the pipeline needs in AWS, wired together; its outputs are what the Helm values take.
# Against a local moto server: terraform apply -var endpoints={s3="http://127.0.0.1:5000",...} (see README).

locals {
  local_endpoints = var.endpoints != null
}

provider "aws" {
  region = var.region

  # a local endpoint (moto) has no real account, credentials or metadata service
  skip_credentials_validation = local.local_endpoints
  skip_metadata_api_check     = local.local_endpoints
  skip_region_validation      = local.local_endpoints
  skip_requesting_account_id  = false # the IAM module builds Glue ARNs from the account id (moto answers)
  s3_use_path_style           = local.local_endpoints

  dynamic "endpoints" {
    for_each = local.local_endpoints ? [var.endpoints] : []
    content {
      s3     = endpoints.value.s3
      glue   = endpoints.value.glue
      athena = endpoints.value.athena
      iam    = endpoints.value.iam
      sts    = endpoints.value.sts
      ecr    = endpoints.value.ecr
    }
  }

  default_tags {
    tags = var.tags
  }
}

module "lake_bucket" {
  source = "../../modules/lake_bucket"

  bucket         = var.lake_bucket
  prefix         = var.lake_prefix
  retention_days = var.retention_days
  force_destroy  = var.force_destroy
}

module "glue_catalog" {
  source = "../../modules/glue_catalog"

  database = var.glue_database
  bucket   = module.lake_bucket.bucket
  prefix   = module.lake_bucket.prefix
}

module "athena_workgroup" {
  source = "../../modules/athena_workgroup"

  name                           = var.name
  results_bucket                 = var.results_bucket
  bytes_scanned_cutoff_per_query = var.bytes_scanned_cutoff_per_query
  force_destroy                  = var.force_destroy
}

module "ecr" {
  source = "../../modules/ecr"

  name         = var.ecr_repository
  force_delete = var.force_destroy
}

module "iam" {
  source = "../../modules/iam"

  name_prefix          = var.name
  lake_bucket_arn      = module.lake_bucket.bucket_arn
  lake_prefix          = module.lake_bucket.prefix
  glue_database        = module.glue_catalog.database
  results_bucket_arn   = module.athena_workgroup.results_bucket_arn
  results_prefix       = module.athena_workgroup.results_prefix
  athena_workgroup_arn = module.athena_workgroup.workgroup_arn
  oidc_provider_arn    = var.oidc_provider_arn
  oidc_provider_url    = var.oidc_provider_url
  namespace            = var.namespace
}
