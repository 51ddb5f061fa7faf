output "region" {
  description = "lake.s3.region and athena.region."
  value       = var.region
}

output "bucket" {
  description = "lake.s3.bucket."
  value       = module.lake_bucket.bucket
}

output "prefix" {
  description = "lake.s3.prefix."
  value       = module.lake_bucket.prefix
}

output "glue_database" {
  description = "lake.s3.database and athena.database."
  value       = module.glue_catalog.database
}

output "athena_workgroup" {
  description = "athena.workgroup."
  value       = module.athena_workgroup.workgroup
}

output "ecr_repository_url" {
  description = "image.repository of the Helm values."
  value       = module.ecr.repository_url
}

output "role_arns" {
  description = "IRSA role ARN by name (writer, compactor, reader): eks.amazonaws.com/role-arn of each service account."
  value       = module.iam.role_arns
}

output "data_feed_config" {
  description = "The lake and athena sections of the data-feed config (the Helm values' config)."
  value = {
    lake = {
      s3 = {
        bucket   = module.lake_bucket.bucket
        prefix   = module.lake_bucket.prefix
        region   = var.region
        database = module.glue_catalog.database
      }
      retention_days = var.retention_days
    }
    athena = {
      database  = module.glue_catalog.database
      workgroup = module.athena_workgroup.workgroup
      region    = var.region
    }
  }
}
