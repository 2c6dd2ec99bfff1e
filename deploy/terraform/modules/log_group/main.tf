# A CloudWatch log group encrypted with a rotating KMS key of its own, whose policy lets only the account
# administer it and CloudWatch Logs use it for this one log group. Shared by the events and hosted roots.

terraform {
  required_version = ">= 1.7.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }
}

variable "name" {
  description = "Log group name, e.g. /ecs/embedding-service."
  type        = string
}

variable "retention_days" {
  description = "Days the log events are kept."
  type        = number
}

variable "tags" {
  description = "Tags added to the key and the log group."
  type        = map(string)
  default     = {}
}

data "aws_region" "current" {}

data "aws_caller_identity" "current" {}

# A key policy's "*" resource means this key only; access is limited by principal (and, for logs, context).
data "aws_iam_policy_document" "key" {
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
      values   = ["arn:aws:logs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:log-group:${var.name}"]
    }
  }
}

resource "aws_kms_key" "this" {
  description         = "Encrypts ${var.name}"
  enable_key_rotation = true
  policy              = data.aws_iam_policy_document.key.json
  tags                = var.tags
}

resource "aws_cloudwatch_log_group" "this" {
  name              = var.name
  retention_in_days = var.retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = var.tags
}

output "name" {
  value = aws_cloudwatch_log_group.this.name
}

output "arn" {
  value = aws_cloudwatch_log_group.this.arn
}

output "kms_key_arn" {
  value = aws_kms_key.this.arn
}
