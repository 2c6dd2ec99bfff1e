# `terraform test` with a mocked AWS provider: plans the module offline and checks what the issue asks of it.
# tests/contract/test_terraform.py also plans a copy of this module with a generated test file that
# checks the container command and health check equal docker-compose.yml's embedding-service-events.

mock_provider "aws" {
  mock_data "aws_region" {
    defaults = { name = "eu-west-1" }
  }
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
}

variables {
  namespace                 = "events"
  cluster_arn               = "arn:aws:ecs:eu-west-1:123456789012:cluster/events"
  vpc_id                    = "vpc-0123456789abcdef0"
  private_subnet_ids        = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]
  caller_security_group_ids = ["sg-0eeeeeeeeeeeeeee1", "sg-0eeeeeeeeeeeeeee2"]
  image                     = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/embedding-service:1.0.0"
  api_key_secret_arn        = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:embedding-api-key-AbCdEf"
}

run "task_definition" {
  command = plan

  assert {
    condition     = aws_ecs_task_definition.this.cpu == "512" && aws_ecs_task_definition.this.memory == "1024"
    error_message = "the task must have 512 CPU units and 1024 MB"
  }

  assert {
    condition     = aws_ecs_task_definition.this.network_mode == "awsvpc" && contains(aws_ecs_task_definition.this.requires_compatibilities, "FARGATE")
    error_message = "Fargate task with awsvpc networking expected"
  }

  assert {
    condition     = jsondecode(aws_ecs_task_definition.this.container_definitions)[0].command == ["embedding-service", "serve", "--host", "0.0.0.0", "--port", "8003", "--workers", "1"]
    error_message = "container command must be the compose command of embedding-service-events"
  }

  assert {
    condition     = jsondecode(aws_ecs_task_definition.this.container_definitions)[0].portMappings[0].containerPort == 8003
    error_message = "container must listen on 8003"
  }

  assert {
    condition     = strcontains(jsondecode(aws_ecs_task_definition.this.container_definitions)[0].healthCheck.command[3], "http://127.0.0.1:8003/health")
    error_message = "health check must GET /health on 8003"
  }

  assert {
    condition     = jsondecode(aws_ecs_task_definition.this.container_definitions)[0].logConfiguration.options["awslogs-group"] == "/ecs/embedding-service"
    error_message = "logs go to /ecs/embedding-service"
  }

  assert {
    condition     = contains([for e in jsondecode(aws_ecs_task_definition.this.container_definitions)[0].environment : "${e.name}=${e.value}"], "MODEL_NAME=all-MiniLM-L6-v2")
    error_message = "the events container serves all-MiniLM-L6-v2"
  }
}

run "internal_service" {
  command = plan

  assert {
    condition     = aws_ecs_service.this.desired_count == 1
    error_message = "desired count 1"
  }

  assert {
    condition     = one(aws_ecs_service.this.network_configuration).assign_public_ip == false
    error_message = "the service is internal only"
  }

  assert {
    condition     = module.logs.name == "/ecs/embedding-service"
    error_message = "log group /ecs/embedding-service"
  }

  assert {
    condition     = aws_service_discovery_service.this.name == "embedding" && aws_service_discovery_private_dns_namespace.this[0].name == "events.local"
    error_message = "Cloud Map name embedding.events.local"
  }

  assert {
    condition     = output.embedding_service_url == "http://embedding.events.local:8003"
    error_message = "EMBEDDING_SERVICE_URL output"
  }

  assert {
    condition     = toset([for r in aws_vpc_security_group_ingress_rule.from_callers : r.referenced_security_group_id]) == toset(var.caller_security_group_ids)
    error_message = "one ingress rule per caller security group"
  }

  assert {
    condition     = alltrue([for r in aws_vpc_security_group_ingress_rule.from_callers : r.from_port == 8003 && r.to_port == 8003 && r.ip_protocol == "tcp" && r.cidr_ipv4 == null])
    error_message = "ingress only on 8003/tcp and only from security groups, never from CIDRs"
  }
}

run "existing_namespace" {
  command = plan

  variables {
    existing_namespace_id = "ns-abcdefghijklmnop"
  }

  assert {
    condition     = length(aws_service_discovery_private_dns_namespace.this) == 0
    error_message = "no namespace is created when one is given"
  }
}

run "rejects_a_service_open_to_nobody" {
  command = plan

  variables {
    caller_security_group_ids = []
  }

  expect_failures = [var.caller_security_group_ids]
}
