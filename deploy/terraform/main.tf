# The events-app embedding service on ECS Fargate: internal only, reachable at embedding.<namespace>.local:8003
# from the callers' security groups. The container runs the same command and health check as the
# `embedding-service-events` service in docker-compose.yml (a test keeps them equal).

data "aws_region" "current" {}

data "aws_caller_identity" "current" {}

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

# A key policy's "*" resource means this key only; access is limited by principal (and, for logs, context).
data "aws_iam_policy_document" "logs_key" {
  #checkov:skip=CKV_AWS_109:key policy; resource "*" is the key itself, administered by the account only
  #checkov:skip=CKV_AWS_111:key policy; resource "*" is the key itself, administered by the account only
  #checkov:skip=CKV_AWS_356:key policy; resource "*" is the key itself, administered by the account only
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchLogsEncrypts"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${data.aws_region.current.name}.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:aws:logs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:log-group:${local.log_group_name}"]
    }
  }
}

resource "aws_kms_key" "logs" {
  description         = "Encrypts ${local.log_group_name}"
  enable_key_rotation = true
  policy              = data.aws_iam_policy_document.logs_key.json
  tags                = var.tags
}

resource "aws_cloudwatch_log_group" "this" {
  name              = local.log_group_name
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.logs.arn
  tags              = var.tags
}

# --- IAM ----------------------------------------------------------------------------------------------------

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

# Used by ECS to pull the image, write logs and read the API key secret.
resource "aws_iam_role" "execution" {
  name_prefix        = "embedding-exec-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

data "aws_iam_policy_document" "read_api_key" {
  statement {
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [var.api_key_secret_arn]
  }
}

resource "aws_iam_role_policy" "read_api_key" {
  name_prefix = "read-api-key-"
  role        = aws_iam_role.execution.id
  policy      = data.aws_iam_policy_document.read_api_key.json
}

# The application itself calls no AWS API: its task role has no policies.
resource "aws_iam_role" "task" {
  name_prefix        = "embedding-task-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
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
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
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

  depends_on = [aws_cloudwatch_log_group.this, aws_iam_role_policy.read_api_key]
}
