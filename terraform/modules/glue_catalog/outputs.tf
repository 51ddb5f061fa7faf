output "database" {
  description = "Glue database (lake.s3.database, athena.database)."
  value       = aws_glue_catalog_database.lake.name
}

output "database_arn" {
  description = "Glue database ARN."
  value       = aws_glue_catalog_database.lake.arn
}

output "tables" {
  description = "Table names, one per channel."
  value       = sort([for t in aws_glue_catalog_table.channel : t.name])
}
