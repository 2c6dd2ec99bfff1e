# The hosted (multi-tenant) embedding service on ECS Fargate: N tasks behind an internal HTTPS application load
# balancer, scaled by target tracking, keeping their state in RDS PostgreSQL (accounts, keys, usage, the embedding
# cache) and ElastiCache Redis (quota counters). The container runs the same command and health check as the
# `embedding-service-hosted` service in docker-compose.yml (a test keeps them equal). What each replica needs: the
# README's "Scaling out" section. Shared with the events root (..): modules/log_group and modules/task_roles.

data "aws_region" "current" {}

data "aws_caller_identity" "current" {}

locals {
  port           = 8090
  model_path     = "/var/lib/embedding-models"
  log_group_name = "/ecs/${var.name}"
  cluster_name   = element(split("/", var.cluster_arn), 1)

  # On SIGTERM the service answers new requests 503 while those in flight finish, for at most this long, then
  # stops within ~2 s plus the model call then running (README, "Graceful shutdown"). ECS first takes the task
  # out of the target group (deregistration_delay) and only then sends SIGTERM; stop_timeout is the time from
  # SIGTERM to SIGKILL.
  drain_seconds        = 8
  stop_timeout_seconds = 30
  # The load balancer reuses its connections to a task for up to its idle timeout: the task must keep them open
  # longer, or a request sent on a connection the task has just closed is answered 502 by the ALB.
  alb_idle_timeout_seconds = 60
  keep_alive_seconds       = local.alb_idle_timeout_seconds + 15

  command = ["embedding-service", "serve", "--host", "0.0.0.0", "--port", tostring(local.port), "--workers", "1"]
  health_check_command = [
    "CMD",
    "python",
    "-c",
    "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:${local.port}/health', timeout=5).status == 200 else 1)",
  ]

  secrets = concat(
    [
      { name = "JWT_SECRET", valueFrom = var.jwt_secret_arn },
      { name = "ENCRYPTION_KEY", valueFrom = var.encryption_key_secret_arn },
      { name = "DATABASE_URL", valueFrom = aws_secretsmanager_secret.database_url.arn },
      { name = "REDIS_URL", valueFrom = aws_secretsmanager_secret.redis_url.arn },
    ],
    var.metrics_key_secret_arn == null ? [] : [{ name = "METRICS_KEY", valueFrom = var.metrics_key_secret_arn }],
  )

  container = {
    name                   = "embedding-service"
    image                  = var.image
    essential              = true
    command                = local.command
    user                   = "10001"
    readonlyRootFilesystem = true
    portMappings           = [{ containerPort = local.port, hostPort = local.port, protocol = "tcp" }]
    environment = concat([
      { name = "MODEL_NAME", value = var.model_name },
      { name = "MODEL_PATH", value = local.model_path },
      { name = "MAX_WORKERS", value = "1" },
      { name = "HF_HOME", value = "${local.model_path}/.hf-home" },
      # The root filesystem is read-only; the models volume (declared VOLUME in the Dockerfile) is the app's.
      { name = "TMPDIR", value = local.model_path },
      { name = "MAX_INPUT_LENGTH", value = "8192" },
      { name = "HOSTED", value = "true" },
      { name = "CACHE_BACKEND", value = "postgres" },
      { name = "METRICS_ENABLED", value = "true" },
      { name = "SHUTDOWN_DRAIN_SECONDS", value = tostring(local.drain_seconds) },
      { name = "KEEP_ALIVE_SECONDS", value = tostring(local.keep_alive_seconds) },
    ], [for key in sort(keys(var.environment)) : { name = key, value = var.environment[key] }])
    secrets = local.secrets
    mountPoints = [
      { sourceVolume = "models", containerPath = local.model_path, readOnly = false },
    ]
    healthCheck = {
      command     = local.health_check_command
      interval    = 30
      timeout     = 10
      retries     = 3
      startPeriod = 120
    }
    stopTimeout = local.stop_timeout_seconds
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = local.log_group_name
        awslogs-region        = data.aws_region.current.name
        awslogs-stream-prefix = var.name
      }
    }
  }
}

# --- logs and IAM (shared modules) ---------------------------------------------------------------------------

module "logs" {
  source = "../modules/log_group"

  name           = local.log_group_name
  retention_days = var.log_retention_days
  tags           = var.tags
}

# The execution role may read exactly the task's secrets (and decrypt them through Secrets Manager); the task role
# has no policies: the application calls no AWS API.
module "roles" {
  source = "../modules/task_roles"

  name_prefix          = "${var.name}-"
  secret_arns          = [for secret in local.secrets : secret.valueFrom]
  secrets_kms_key_arns = concat([aws_kms_key.data.arn], var.secrets_kms_key_arns)
  tags                 = var.tags
}

# --- ECS ----------------------------------------------------------------------------------------------------

resource "aws_ecs_task_definition" "this" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = tostring(var.task_cpu)
  memory                   = tostring(var.task_memory)
  execution_role_arn       = module.roles.execution_role_arn
  task_role_arn            = module.roles.task_role_arn
  container_definitions    = jsonencode([local.container])

  # Task ephemeral storage, seeded from the image's VOLUME at this path (so owned by the app user); the model
  # is downloaded (pinned revision, sha256-verified) into it when the task starts.
  volume {
    name = "models"
  }

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  tags = var.tags
}

resource "aws_ecs_service" "this" {
  name                              = var.name
  cluster                           = var.cluster_arn
  task_definition                   = aws_ecs_task_definition.this.arn
  desired_count                     = var.desired_count
  launch_type                       = "FARGATE"
  platform_version                  = "LATEST"
  enable_execute_command            = false
  propagate_tags                    = "SERVICE"
  health_check_grace_period_seconds = var.health_check_grace_period_seconds

  # A rolling deployment starts the new tasks before it stops old ones: capacity never drops below the count.
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.service.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.this.arn
    container_name   = local.container.name
    container_port   = local.port
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  tags = var.tags

  # The autoscaling policies own the number of tasks once the service exists.
  lifecycle {
    ignore_changes = [desired_count]
  }

  depends_on = [
    module.logs,
    module.roles,
    aws_lb_listener.https,
    aws_secretsmanager_secret_version.database_url,
    aws_secretsmanager_secret_version.redis_url,
  ]
}

# --- autoscaling ----------------------------------------------------------------------------------------------

resource "aws_appautoscaling_target" "this" {
  service_namespace  = "ecs"
  resource_id        = "service/${local.cluster_name}/${aws_ecs_service.this.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.min_capacity
  max_capacity       = var.max_capacity
  tags               = var.tags
}

# Model calls are CPU bound: the service's average CPU is its load. Scale out fast, in slowly.
resource "aws_appautoscaling_policy" "cpu" {
  name               = "${var.name}-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.this.service_namespace
  resource_id        = aws_appautoscaling_target.this.resource_id
  scalable_dimension = aws_appautoscaling_target.this.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.cpu_target_percent
    scale_out_cooldown = 60
    scale_in_cooldown  = 300

    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

resource "aws_appautoscaling_policy" "requests" {
  count = var.requests_per_target == null ? 0 : 1

  name               = "${var.name}-requests"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.this.service_namespace
  resource_id        = aws_appautoscaling_target.this.resource_id
  scalable_dimension = aws_appautoscaling_target.this.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.requests_per_target
    scale_out_cooldown = 60
    scale_in_cooldown  = 300

    predefined_metric_specification {
      predefined_metric_type = "ALBRequestCountPerTarget"
      resource_label         = "${aws_lb.this.arn_suffix}/${aws_lb_target_group.this.arn_suffix}"
    }
  }
}
