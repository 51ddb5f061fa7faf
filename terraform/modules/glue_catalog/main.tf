# The Glue catalog of the lake: one database, one table per lake channel. Columns and partition keys come from
# lake_tables.tf.json, generated from the Arrow schemas (`python -m data_feed.lake.glue_tables --terraform`).
#
# Catalog mode: explicit partitions. The aggregator registers each (exchange, symbol, date) partition with
# BatchCreatePartition as the first slice of it lands, after the PUT and before it acknowledges the stream entries
# (data_feed.lake.s3.GlueCatalog), and retention drops it from Glue before deleting its files. Queries (data-feed query
# and Athena) see a partition only once it is registered. Partition projection is deliberately off
# (projection.enabled = false): with it, Athena would read a partition's files before the aggregator's commit and
# after retention dropped it, and the code's snapshot reads Glue's partition list.

locals {
  channels = var.channels == null ? keys(local.lake_tables) : var.channels
  tables   = { for channel in local.channels : channel => local.lake_tables[channel] }
  # what awswrangler's create_parquet_table writes, so the aggregator's ensure_table (mode append) finds the
  # table as it would have made it and leaves it alone
  table_parameters = {
    classification       = "parquet"
    compressionType      = var.compression
    typeOfData           = "file"
    "projection.enabled" = "false"
  }
}

resource "aws_glue_catalog_database" "lake" {
  name        = var.database
  description = "data-feed lake: one table per channel, Hive partitions exchange/symbol/date registered by the aggregator"
}

resource "aws_glue_catalog_table" "channel" {
  for_each = local.tables

  database_name = aws_glue_catalog_database.lake.name
  name          = each.key
  table_type    = "EXTERNAL_TABLE"
  description   = "data-feed lake channel ${each.key}"
  parameters    = local.table_parameters

  dynamic "partition_keys" {
    for_each = local.lake_partition_keys
    content {
      name = partition_keys.value.name
      type = partition_keys.value.type
    }
  }

  storage_descriptor {
    location          = "s3://${var.bucket}/${var.prefix}/${each.key}/"
    input_format      = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
    output_format     = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"
    compressed        = true
    number_of_buckets = -1
    parameters = {
      CrawlerSchemaDeserializerVersion = "1.0"
      classification                   = "parquet"
      compressionType                  = var.compression
      typeOfData                       = "file"
    }

    ser_de_info {
      serialization_library = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
      parameters = {
        "serialization.format" = "1"
      }
    }

    dynamic "columns" {
      for_each = each.value
      content {
        name = columns.value.name
        type = columns.value.type
      }
    }
  }
}
