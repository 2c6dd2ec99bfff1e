# The two IAM roles of an ECS task: the execution role (ECS pulls the image, writes the logs and reads the named
# Secrets Manager secrets, nothing else) and the task role (the application calls no AWS API: no policies).
# Shared by the events and hosted roots.

terraform {
  required_version = ">= 1.7.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }
}

variable "name_prefix" {
  description = "Prefix of the role names: <prefix>exec-... and <prefix>task-..."
  type        = string
}

variable "secret_arns" {
  description = "Secrets Manager secrets ECS injects into the container; the execution role may read these only."
  type        = list(string)

  validation {
    condition     = length(var.secret_arns) > 0
    error_message = "give the secrets the task reads."
  }
}

variable "secrets_kms_key_arns" {
  description = "Customer managed KMS keys encrypting those secrets; the execution role may decrypt with them through Secrets Manager only."
  type        = list(string)
  default     = []
}

variable "secrets_policy_name_prefix" {
  description = "Name prefix of the execution role's inline policy that reads the secrets."
  type        = string
  default     = "read-secrets-"
}

variable "tags" {
  description = "Tags added to the roles."
  type        = map(string)
  default     = {}
}

data "aws_region" "current" {}

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "execution" {
  name_prefix        = "${var.name_prefix}exec-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

data "aws_iam_policy_document" "read_secrets" {
  statement {
    actions   = ["secretsmanager:GetSecretValue"]
    resources = var.secret_arns
  }

  dynamic "statement" {
    for_each = length(var.secrets_kms_key_arns) > 0 ? [1] : []
    content {
      sid       = "DecryptTheSecrets"
      actions   = ["kms:Decrypt"]
      resources = var.secrets_kms_key_arns
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["secretsmanager.${data.aws_region.current.name}.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role_policy" "read_secrets" {
  name_prefix = var.secrets_policy_name_prefix
  role        = aws_iam_role.execution.id
  policy      = data.aws_iam_policy_document.read_secrets.json
}

resource "aws_iam_role" "task" {
  name_prefix        = "${var.name_prefix}task-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

output "execution_role_arn" {
  value = aws_iam_role.execution.arn
}

output "task_role_arn" {
  value = aws_iam_role.task.arn
}

output "read_secrets_policy" {
  description = "The execution role's secrets policy (JSON)."
  value       = data.aws_iam_policy_document.read_secrets.json
}

output "secret_arns" {
  description = "The secrets the execution role may read."
  value       = var.secret_arns
}

output "secrets_kms_key_arns" {
  description = "The keys the execution role may decrypt them with (through Secrets Manager)."
  value       = var.secrets_kms_key_arns
}
