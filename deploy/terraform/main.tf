# The events-app embedding service on ECS Fargate: internal only, reachable at embedding.<namespace>.local:8003
# from the callers' security groups. The container runs the same command and health check as the
# `embedding-service-events` service in docker-compose.yml (a test keeps them equal).

data "aws_region" "current" {}

locals {
  name           = "embedding-service"
  port           = 8003
  model_path     = "/var/lib/embedding-models"
  log_group_name = "/ecs/embedding-service"
  namespace_name = "${var.namespace}.local"
  namespace_id   = var.existing_namespace_id != null ? var.existing_namespace_id : aws_service_discovery_private_dns_namespace.this[0].id

  command = ["embedding-service", "serve", "--host", "0.0.0.0", "--port", tostring(local.port), "--workers", "1"]
  health_check_command = [
    "CMD",
    "python",
    "-c",
    "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:${local.port}/health', timeout=5).status == 200 else 1)",
  ]

  container = {
    name                   = local.name
    image                  = var.image
    essential              = true
    command                = local.command
    user                   = "10001"
    readonlyRootFilesystem = true
    portMappings           = [{ containerPort = local.port, hostPort = local.port, protocol = "tcp" }]
    environment = [
      { name = "MODEL_NAME", value = var.model_name },
      { name = "MODEL_PATH", value = local.model_path },
      { name = "MAX_WORKERS", value = "1" },
      { name = "HF_HOME", value = "${local.model_path}/.hf-home" },
      # The root filesystem is read-only; the models volume (declared VOLUME in the Dockerfile) is the app's.
      { name = "TMPDIR", value = local.model_path },
    ]
    secrets = [{ name = "EMBEDDING_API_KEY", valueFrom = var.api_key_secret_arn }]
    mountPoints = [
      { sourceVolume = "models", containerPath = local.model_path, readOnly = false },
    ]
    healthCheck = {
      command     = local.health_check_command
      interval    = 30
      timeout     = 10
      retries     = 3
      startPeriod = 30
    }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = local.log_group_name
        awslogs-region        = data.aws_region.current.name
        awslogs-stream-prefix = local.name
      }
    }
  }
}

# --- logs ---------------------------------------------------------------------------------------------------

# /ecs/embedding-service, encrypted with a rotating key of its own (modules/log_group).
module "logs" {
  source = "./modules/log_group"

  name           = local.log_group_name
  retention_days = var.log_retention_days
  tags           = var.tags
}

moved {
  from = aws_kms_key.logs
  to   = module.logs.aws_kms_key.this
}

moved {
  from = aws_cloudwatch_log_group.this
  to   = module.logs.aws_cloudwatch_log_group.this
}

# --- IAM ----------------------------------------------------------------------------------------------------

# Execution role: ECS pulls the image, writes logs and reads the API key secret. Task role: the application itself
# calls no AWS API, so it has no policies (modules/task_roles).
module "roles" {
  source = "./modules/task_roles"

  name_prefix                = "embedding-"
  secret_arns                = [var.api_key_secret_arn]
  secrets_policy_name_prefix = "read-api-key-"
  tags                       = var.tags
}

moved {
  from = aws_iam_role.execution
  to   = module.roles.aws_iam_role.execution
}

moved {
  from = aws_iam_role_policy_attachment.execution
  to   = module.roles.aws_iam_role_policy_attachment.execution
}

moved {
  from = aws_iam_role_policy.read_api_key
  to   = module.roles.aws_iam_role_policy.read_secrets
}

moved {
  from = aws_iam_role.task
  to   = module.roles.aws_iam_role.task
}

# --- network ------------------------------------------------------------------------------------------------

resource "aws_security_group" "this" {
  name_prefix = "embedding-service-"
  description = "embedding-service: ${local.port}/tcp from the callers only"
  vpc_id      = var.vpc_id
  tags        = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "from_callers" {
  for_each = toset(var.caller_security_group_ids)

  security_group_id            = aws_security_group.this.id
  description                  = "embedding API from caller ${each.value}"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = local.port
  to_port                      = local.port
  tags                         = var.tags
}

# HTTPS out: image pull, logs, Secrets Manager, and the first download of the pinned model from the hub.
resource "aws_vpc_security_group_egress_rule" "https" {
  security_group_id = aws_security_group.this.id
  description       = "HTTPS to AWS APIs and the Hugging Face hub"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  tags              = var.tags
}

# --- service discovery ----------------------------------------------------------------------------------------

resource "aws_service_discovery_private_dns_namespace" "this" {
  count = var.existing_namespace_id == null ? 1 : 0

  name        = local.namespace_name
  description = "Private names of the ${var.namespace} services"
  vpc         = var.vpc_id
  tags        = var.tags
}

resource "aws_service_discovery_service" "this" {
  name = "embedding"

  dns_config {
    namespace_id   = local.namespace_id
    routing_policy = "MULTIVALUE"

    dns_records {
      type = "A"
      ttl  = 10
    }
  }

  health_check_custom_config {
    failure_threshold = 1
  }

  tags = var.tags
}

# --- ECS ----------------------------------------------------------------------------------------------------

resource "aws_ecs_task_definition" "this" {
  family                   = local.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = "512"
  memory                   = "1024"
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
  name                   = local.name
  cluster                = var.cluster_arn
  task_definition        = aws_ecs_task_definition.this.arn
  desired_count          = var.desired_count
  launch_type            = "FARGATE"
  platform_version       = "LATEST"
  enable_execute_command = false
  propagate_tags         = "SERVICE"

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.this.id]
    assign_public_ip = false
  }

  service_registries {
    registry_arn = aws_service_discovery_service.this.arn
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  tags = var.tags

  depends_on = [module.logs, module.roles]
}
