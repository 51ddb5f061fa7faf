variable "database" {
  description = "Glue database of the lake (lake.s3.database and athena.database of the config)."
  type        = string
  default     = "data_feed"
}

variable "bucket" {
  description = "Lake bucket (lake.s3.bucket)."
  type        = string
}

variable "prefix" {
  description = "Key prefix of the lake (lake.s3.prefix); the table of a channel is at s3://<bucket>/<prefix>/<channel>/."
  type        = string
  default     = "lake"
}

variable "channels" {
  description = "Channels to create tables for; null = every lake channel (lake_tables.tf.json, generated from data_feed.contracts.schemas)."
  type        = list(string)
  default     = null
}

variable "compression" {
  description = "compressionType parameter of the tables: the lake writes zstd parquet (data_feed.contracts.schemas.parquet_write_options)."
  type        = string
  default     = "zstd"
}
