output "role_arns" {
  description = "Role ARN by name (writer, compactor, reader): the eks.amazonaws.com/role-arn annotation of each service account."
  value       = { for name, role in aws_iam_role.role : name => role.arn }
}

output "writer_role_arn" {
  description = "Writer role ARN (collectors, aggregators)."
  value       = aws_iam_role.role["writer"].arn
}

output "compactor_role_arn" {
  description = "Compactor role ARN (lake compact, lake expire)."
  value       = aws_iam_role.role["compactor"].arn
}

output "reader_role_arn" {
  description = "Reader role ARN (Athena queries)."
  value       = aws_iam_role.role["reader"].arn
}
