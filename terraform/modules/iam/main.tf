# Least-privilege roles of the pipeline, assumed by Kubernetes service accounts through the cluster's OIDC
# provider (IRSA):
#   writer    collectors and aggregators: read/write objects under the lake prefix, read the catalog, register
#             partitions (data_feed.lake.s3.GlueCatalog.register: GetDatabase, GetTable, BatchCreatePartition, ...)
#   compactor the writer's grants plus deleting objects and partitions (lake compact, lake expire)
#   reader    Athena queries in the workgroup, catalog reads, lake reads (through Athena only, unless
#             reader_direct_s3), writes of query results
# No grant names a wildcard resource except where the API has no resource-level permissions
# (athena:ListWorkGroups is not needed and not granted; glue partitions are scoped to the database's tables).

data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

locals {
  issuer  = trimprefix(var.oidc_provider_url, "https://")
  objects = "${var.lake_bucket_arn}/${var.lake_prefix}/*"
  glue    = "arn:${data.aws_partition.current.partition}:glue:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}"
  glue_catalog = [
    "${local.glue}:catalog",
    "${local.glue}:database/${var.glue_database}",
    "${local.glue}:table/${var.glue_database}/*",
  ]
  results_objects = "${var.results_bucket_arn}/${var.results_prefix}/*"
  kms             = length(var.kms_key_arns) > 0
}

data "aws_iam_policy_document" "trust" {
  for_each = tomap(var.service_accounts)

  statement {
    sid     = "KubernetesServiceAccounts"
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.issuer}:sub"
      values   = [for sa in each.value : "system:serviceaccount:${var.namespace}:${sa}"]
    }
  }
}

data "aws_iam_policy_document" "writer" {
  statement {
    sid       = "ListLakePrefix"
    actions   = ["s3:ListBucket"]
    resources = [var.lake_bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [var.lake_prefix, "${var.lake_prefix}/*"]
    }
  }
  statement {
    sid       = "BucketLocation"
    actions   = ["s3:GetBucketLocation"]
    resources = [var.lake_bucket_arn]
  }
  statement {
    sid       = "ReadWriteLakeObjects"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
    resources = [local.objects]
  }
  statement {
    sid = "RegisterPartitions"
    actions = [
      "glue:GetDatabase", "glue:GetTable", "glue:GetTables",
      "glue:GetPartition", "glue:GetPartitions", "glue:BatchGetPartition",
      "glue:CreatePartition", "glue:BatchCreatePartition", "glue:UpdatePartition",
    ]
    resources = local.glue_catalog
  }
  dynamic "statement" {
    for_each = local.kms ? [1] : []
    content {
      sid       = "LakeKey"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = var.kms_key_arns
    }
  }
}

data "aws_iam_policy_document" "compactor_extra" {
  statement {
    sid       = "DeleteLakeObjects"
    actions   = ["s3:DeleteObject"]
    resources = [local.objects]
  }
  statement {
    sid       = "DropPartitions"
    actions   = ["glue:DeletePartition", "glue:BatchDeletePartition"]
    resources = local.glue_catalog
  }
}

data "aws_iam_policy_document" "reader" {
  statement {
    sid = "QueryThroughWorkgroup"
    actions = [
      "athena:StartQueryExecution", "athena:StopQueryExecution", "athena:GetQueryExecution",
      "athena:GetQueryResults", "athena:GetQueryResultsStream", "athena:BatchGetQueryExecution",
      "athena:ListQueryExecutions", "athena:GetWorkGroup",
    ]
    resources = [var.athena_workgroup_arn]
  }
  statement {
    sid = "ReadCatalog"
    actions = [
      "glue:GetDatabase", "glue:GetDatabases", "glue:GetTable", "glue:GetTables",
      "glue:GetPartition", "glue:GetPartitions", "glue:BatchGetPartition",
    ]
    resources = local.glue_catalog
  }
  statement {
    sid       = "ListLake"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [var.lake_bucket_arn]
  }
  statement {
    sid       = "ReadLakeObjects"
    actions   = ["s3:GetObject"]
    resources = [local.objects]
    dynamic "condition" {
      for_each = var.reader_direct_s3 ? [] : [1]
      content {
        test     = "ForAnyValue:StringEquals"
        variable = "aws:CalledVia"
        values   = ["athena.amazonaws.com"]
      }
    }
  }
  statement {
    sid       = "ResultsBucket"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [var.results_bucket_arn]
  }
  statement {
    sid       = "WriteResults"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
    resources = [local.results_objects]
  }
  dynamic "statement" {
    for_each = local.kms ? [1] : []
    content {
      sid       = "Keys"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = var.kms_key_arns
    }
  }
}

locals {
  policies = {
    writer    = [data.aws_iam_policy_document.writer.json]
    compactor = [data.aws_iam_policy_document.writer.json, data.aws_iam_policy_document.compactor_extra.json]
    reader    = [data.aws_iam_policy_document.reader.json]
  }
  attachments = merge([
    for role, docs in local.policies : { for i, doc in docs : "${role}-${i}" => { role = role, doc = doc } }
  ]...)
}

resource "aws_iam_role" "role" {
  for_each = tomap(var.service_accounts)

  name                 = "${var.name_prefix}-${each.key}"
  description          = "data-feed ${each.key}: assumed by service accounts ${join(", ", each.value)} in ${var.namespace}"
  assume_role_policy   = data.aws_iam_policy_document.trust[each.key].json
  max_session_duration = var.max_session_seconds
  tags                 = var.tags
}

resource "aws_iam_policy" "policy" {
  for_each = local.attachments

  name        = "${var.name_prefix}-${each.key}"
  description = "data-feed ${each.value.role} grants (${each.key})"
  policy      = each.value.doc
  tags        = var.tags
}

resource "aws_iam_role_policy_attachment" "policy" {
  for_each = local.attachments

  role       = aws_iam_role.role[each.value.role].name
  policy_arn = aws_iam_policy.policy[each.key].arn
}
