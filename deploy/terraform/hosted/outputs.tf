output "service_url" {
  description = "The callers' base URL (the HTTPS listener of the internal ALB, under domain_name)."
  value       = "https://${var.domain_name}"
}

output "alb_dns_name" {
  description = "Internal DNS name of the ALB: point domain_name at it (an alias record) when private_zone_id is null."
  value       = aws_lb.this.dns_name
}

output "alb_zone_id" {
  description = "Hosted zone of the ALB, for an alias record."
  value       = aws_lb.this.zone_id
}

output "embedding_model" {
  description = "The model served (callers may pin it, e.g. EMBEDDING_MODEL)."
  value       = var.model_name
}

output "alb_security_group_id" {
  description = "Security group of the ALB: allow the callers egress to 443 on it."
  value       = aws_security_group.alb.id
}

output "service_security_group_id" {
  description = "Security group of the tasks (one-off tasks, e.g. `embedding-service accounts ...`, run in it)."
  value       = aws_security_group.service.id
}

output "log_group_name" {
  value = module.logs.name
}

output "service_name" {
  value = aws_ecs_service.this.name
}

output "task_definition_arn" {
  description = "The service's task definition, for one-off operator tasks (aws ecs run-task with a command override)."
  value       = aws_ecs_task_definition.this.arn
}

output "database_endpoint" {
  description = "RDS PostgreSQL address:port (TLS required; the credentials are in the DATABASE_URL secret)."
  value       = "${aws_db_instance.this.address}:${aws_db_instance.this.port}"
}

output "redis_endpoint" {
  description = "ElastiCache primary endpoint address:port (TLS and the auth token required)."
  value       = "${aws_elasticache_replication_group.this.primary_endpoint_address}:${aws_elasticache_replication_group.this.port}"
}

output "database_url_secret_arn" {
  description = "Secrets Manager secret holding DATABASE_URL (the ARN, not the value)."
  value       = aws_secretsmanager_secret.database_url.arn
}

output "redis_url_secret_arn" {
  description = "Secrets Manager secret holding REDIS_URL (the ARN, not the value)."
  value       = aws_secretsmanager_secret.redis_url.arn
}
