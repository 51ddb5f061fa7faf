"""The lake: paths and file names, the local and S3 stores with their catalogs, compaction, retention, repair."""
