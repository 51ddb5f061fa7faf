output "repository_url" {
  description = "Image repository URL (image.repository of the Helm values)."
  value       = aws_ecr_repository.image.repository_url
}

output "repository_arn" {
  description = "Repository ARN."
  value       = aws_ecr_repository.image.arn
}
