output "embedding_service_url" {
  description = "Set EMBEDDING_SERVICE_URL to this in the callers' task definitions."
  value       = "http://${aws_service_discovery_service.this.name}.${local.namespace_name}:${local.port}"
}

output "embedding_model" {
  description = "Set EMBEDDING_MODEL to this in the callers, so their client refuses vectors of any other model."
  value       = var.model_name
}

output "security_group_id" {
  description = "Security group of the embedding tasks."
  value       = aws_security_group.this.id
}

output "log_group_name" {
  value = module.logs.name
}

output "service_name" {
  value = aws_ecs_service.this.name
}
