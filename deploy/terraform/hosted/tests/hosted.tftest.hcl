# `terraform test` (Terraform >= 1.11: overrides during plan) for the hosted root: plans it offline and checks what
# the issue asks of it. Most runs use a mocked AWS provider; the IAM run plans with the real provider (fake
# credentials, nothing is called: the data sources that would call AWS are overridden) so that the policy
# documents are real JSON. tests/contract/test_terraform_hosted.py adds a generated run pinning the container
# command and health check to docker-compose.yml's embedding-service-hosted.

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

provider "aws" {
  alias                       = "offline"
  region                      = "eu-west-1"
  access_key                  = "offline-test"
  secret_key                  = "offline-test"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
}

# What AWS would answer (data sources) and assign (ids, endpoints), known at plan time so that conditions on
# them can be evaluated.
override_data {
  target = data.aws_caller_identity.current
  values = { account_id = "123456789012" }
}

override_data {
  target = module.logs.data.aws_caller_identity.current
  values = { account_id = "123456789012" }
}

override_data {
  target = module.database_logs["postgresql"].data.aws_caller_identity.current
  values = { account_id = "123456789012" }
}

override_data {
  target = module.database_logs["upgrade"].data.aws_caller_identity.current
  values = { account_id = "123456789012" }
}

override_data {
  target = data.aws_secretsmanager_random_password.database
  values = { random_password = "Db0Password0Generated0By0SecretsManager0" }
}

override_data {
  target = data.aws_secretsmanager_random_password.redis
  values = { random_password = "Redis0Token0Generated0By0SecretsManager0Redis0Token0Generated00" }
}

# terraform_data's output (the latched credential) is known only after apply: the same values as the data sources.
override_resource {
  target          = terraform_data.database_password
  override_during = plan
  values          = { output = "Db0Password0Generated0By0SecretsManager0" }
}

override_resource {
  target          = terraform_data.redis_auth_token
  override_during = plan
  values          = { output = "Redis0Token0Generated0By0SecretsManager0Redis0Token0Generated00" }
}

override_resource {
  target          = aws_kms_key.data
  override_during = plan
  values          = { arn = "arn:aws:kms:eu-west-1:123456789012:key/11111111-1111-1111-1111-111111111111" }
}

override_resource {
  target          = aws_secretsmanager_secret.database_url
  override_during = plan
  values          = { arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:embedding-hosted/database-url-AbCdEf" }
}

override_resource {
  target          = aws_secretsmanager_secret.redis_url
  override_during = plan
  values          = { arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:embedding-hosted/redis-url-AbCdEf" }
}

override_resource {
  target          = aws_db_instance.this
  override_during = plan
  values          = { address = "embedding-hosted.abcdefghijkl.eu-west-1.rds.amazonaws.com" }
}

override_resource {
  target          = aws_elasticache_replication_group.this
  override_during = plan
  values          = { primary_endpoint_address = "master.embedding-hosted.abcdef.euw1.cache.amazonaws.com" }
}

override_resource {
  target          = aws_security_group.alb
  override_during = plan
  values          = { id = "sg-0a1b0000000000001" }
}

override_resource {
  target          = aws_security_group.service
  override_during = plan
  values          = { id = "sg-0a1b0000000000002" }
}

override_resource {
  target          = aws_security_group.database
  override_during = plan
  values          = { id = "sg-0a1b0000000000003" }
}

override_resource {
  target          = aws_security_group.redis
  override_during = plan
  values          = { id = "sg-0a1b0000000000004" }
}

variables {
  cluster_arn               = "arn:aws:ecs:eu-west-1:123456789012:cluster/hosted"
  vpc_id                    = "vpc-0123456789abcdef0"
  private_subnet_ids        = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]
  caller_security_group_ids = ["sg-0eeeeeeeeeeeeeee1", "sg-0eeeeeeeeeeeeeee2"]
  image                     = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/embedding-service:1.0.0"
  certificate_arn           = "arn:aws:acm:eu-west-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
  domain_name               = "embeddings.internal.example.com"
  alb_access_logs_bucket    = "example-elb-access-logs"
  jwt_secret_arn            = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:embedding-hosted/jwt-secret-AbCdEf"
  encryption_key_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:embedding-hosted/encryption-key-AbCdEf"
}

run "task_definition" {
  command = plan

  assert {
    condition     = aws_ecs_task_definition.this.cpu == "2048" && aws_ecs_task_definition.this.memory == "4096"
    error_message = "the task must have 2048 CPU units and 4096 MB by default"
  }

  assert {
    condition     = aws_ecs_task_definition.this.network_mode == "awsvpc" && contains(aws_ecs_task_definition.this.requires_compatibilities, "FARGATE")
    error_message = "Fargate task with awsvpc networking expected"
  }

  assert {
    condition     = jsondecode(aws_ecs_task_definition.this.container_definitions)[0].command == ["embedding-service", "serve", "--host", "0.0.0.0", "--port", "8090", "--workers", "1"]
    error_message = "container command must be the compose command of embedding-service-hosted"
  }

  assert {
    condition     = jsondecode(aws_ecs_task_definition.this.container_definitions)[0].portMappings[0].containerPort == 8090
    error_message = "container must listen on 8090"
  }

  assert {
    condition     = strcontains(jsondecode(aws_ecs_task_definition.this.container_definitions)[0].healthCheck.command[3], "http://127.0.0.1:8090/health")
    error_message = "container health check must GET /health on 8090"
  }

  assert {
    condition = alltrue([
      jsondecode(aws_ecs_task_definition.this.container_definitions)[0].user == "10001",
      jsondecode(aws_ecs_task_definition.this.container_definitions)[0].readonlyRootFilesystem,
      jsondecode(aws_ecs_task_definition.this.container_definitions)[0].mountPoints == [{ sourceVolume = "models", containerPath = "/var/lib/embedding-models", readOnly = false }],
      one(aws_ecs_task_definition.this.volume).name == "models",
    ])
    error_message = "user 10001, read-only root filesystem, the models volume at /var/lib/embedding-models"
  }

  assert {
    condition = length(setsubtract([
      "HOSTED=true",
      "MODEL_NAME=all-mpnet-base-v2",
      "MODEL_PATH=/var/lib/embedding-models",
      "MAX_WORKERS=1",
      "METRICS_ENABLED=true",
      "CACHE_BACKEND=postgres",
      "MAX_INPUT_LENGTH=8192",
      "SHUTDOWN_DRAIN_SECONDS=8",
      "KEEP_ALIVE_SECONDS=75",
    ], [for e in jsondecode(aws_ecs_task_definition.this.container_definitions)[0].environment : "${e.name}=${e.value}"])) == 0
    error_message = "hosted mode with mpnet, one worker, metrics, the postgres cache and an 8 s drain"
  }

  assert {
    # SIGTERM to SIGKILL: the 8 s drain, ~2 s to stop and the model call then running must fit.
    condition     = jsondecode(aws_ecs_task_definition.this.container_definitions)[0].stopTimeout >= 8 + 10
    error_message = "stopTimeout must leave the drain time to complete before SIGKILL"
  }

  assert {
    condition     = jsondecode(aws_ecs_task_definition.this.container_definitions)[0].logConfiguration.options["awslogs-group"] == "/ecs/embedding-hosted" && module.logs.name == "/ecs/embedding-hosted"
    error_message = "logs go to /ecs/embedding-hosted"
  }
}

run "secrets_come_from_secrets_manager" {
  command = plan

  assert {
    condition = { for s in jsondecode(aws_ecs_task_definition.this.container_definitions)[0].secrets : s.name => s.valueFrom } == {
      JWT_SECRET     = var.jwt_secret_arn
      ENCRYPTION_KEY = var.encryption_key_secret_arn
      DATABASE_URL   = aws_secretsmanager_secret.database_url.arn
      REDIS_URL      = aws_secretsmanager_secret.redis_url.arn
    }
    error_message = "JWT_SECRET, ENCRYPTION_KEY, DATABASE_URL and REDIS_URL are injected from Secrets Manager (valueFrom), nothing else"
  }

  assert {
    condition = length(setintersection(
      [for e in jsondecode(aws_ecs_task_definition.this.container_definitions)[0].environment : e.name],
      ["JWT_SECRET", "ENCRYPTION_KEY", "DATABASE_URL", "REDIS_URL", "METRICS_KEY", "CACHE_URL"],
    )) == 0
    error_message = "no secret may be a plain environment variable"
  }

  assert {
    condition     = aws_secretsmanager_secret_version.database_url.secret_string == "postgresql://embedding:Db0Password0Generated0By0SecretsManager0@embedding-hosted.abcdefghijkl.eu-west-1.rds.amazonaws.com:5432/embedding?sslmode=require"
    error_message = "DATABASE_URL must be postgresql://embedding:<password>@<rds address>:5432/embedding?sslmode=require"
  }

  assert {
    condition     = aws_db_instance.this.password == "Db0Password0Generated0By0SecretsManager0" && aws_db_instance.this.username == "embedding" && aws_db_instance.this.db_name == "embedding"
    error_message = "the database is created with the credentials of DATABASE_URL"
  }

  assert {
    condition     = aws_secretsmanager_secret_version.redis_url.secret_string == "rediss://:Redis0Token0Generated0By0SecretsManager0Redis0Token0Generated00@master.embedding-hosted.abcdef.euw1.cache.amazonaws.com:6379/0"
    error_message = "REDIS_URL must be rediss://:<auth token>@<primary endpoint>:6379/0"
  }

  assert {
    condition     = aws_elasticache_replication_group.this.auth_token == "Redis0Token0Generated0By0SecretsManager0Redis0Token0Generated00"
    error_message = "Redis is created with the auth token of REDIS_URL"
  }

  assert {
    condition = alltrue([
      aws_secretsmanager_secret.database_url.kms_key_id == aws_kms_key.data.arn,
      aws_secretsmanager_secret.redis_url.kms_key_id == aws_kms_key.data.arn,
    ])
    error_message = "the URL secrets are encrypted with the customer managed key"
  }
}

run "execution_role_reads_exactly_the_four_secrets" {
  command = plan

  # The real provider renders the policy documents (a mocked one answers a fixed JSON).
  providers = {
    aws = aws.offline
  }

  assert {
    condition = toset(flatten([for s in jsondecode(module.roles.read_secrets_policy).Statement : s.Resource if contains(flatten([s.Action]), "secretsmanager:GetSecretValue")])) == toset([
      var.jwt_secret_arn, var.encryption_key_secret_arn, aws_secretsmanager_secret.database_url.arn, aws_secretsmanager_secret.redis_url.arn,
    ])
    error_message = "the execution role may read exactly JWT_SECRET, ENCRYPTION_KEY, DATABASE_URL and REDIS_URL"
  }

  assert {
    condition = alltrue([for s in jsondecode(module.roles.read_secrets_policy).Statement : s.Effect == "Allow" && (
      flatten([s.Action]) == ["secretsmanager:GetSecretValue"] ||
      (flatten([s.Action]) == ["kms:Decrypt"] && flatten([s.Resource]) == [aws_kms_key.data.arn] &&
      try(s.Condition.StringEquals["kms:ViaService"], null) == "secretsmanager.eu-west-1.amazonaws.com")
    )])
    error_message = "besides reading the secrets, the execution role may only decrypt with the data key through Secrets Manager"
  }

  assert {
    condition     = length(jsondecode(data.aws_iam_policy_document.data_key.json).Statement) == 1 && jsondecode(data.aws_iam_policy_document.data_key.json).Statement[0].Principal.AWS == "arn:aws:iam::123456789012:root"
    error_message = "the data key is administered by the account only"
  }
}

run "internal_load_balancer" {
  command = plan

  assert {
    condition     = aws_lb.this.internal == true && aws_lb.this.load_balancer_type == "application"
    error_message = "the load balancer must be an internal application load balancer"
  }

  assert {
    condition     = toset(aws_lb.this.subnets) == toset(var.private_subnet_ids) && aws_lb.this.security_groups == toset([aws_security_group.alb.id])
    error_message = "the load balancer lives in the private subnets, behind its own security group"
  }

  assert {
    # a connection the ALB reuses must still be open at the task (else the ALB answers 502)
    condition     = aws_lb.this.idle_timeout > 10 && one([for e in jsondecode(aws_ecs_task_definition.this.container_definitions)[0].environment : tonumber(e.value) if e.name == "KEEP_ALIVE_SECONDS"]) > aws_lb.this.idle_timeout
    error_message = "the ALB's idle timeout must exceed TIMEOUT_SECONDS and stay below the tasks' KEEP_ALIVE_SECONDS"
  }

  assert {
    condition     = aws_lb.this.drop_invalid_header_fields && aws_lb.this.enable_deletion_protection && one(aws_lb.this.access_logs).enabled
    error_message = "invalid headers dropped, deletion protection, access logs"
  }

  assert {
    condition     = aws_lb_listener.https.port == 443 && aws_lb_listener.https.protocol == "HTTPS" && aws_lb_listener.https.certificate_arn == var.certificate_arn && startswith(aws_lb_listener.https.ssl_policy, "ELBSecurityPolicy-TLS13-")
    error_message = "one HTTPS listener on 443 with the given certificate and a TLS 1.3/1.2 policy"
  }

  assert {
    condition     = aws_lb_target_group.this.port == 8090 && aws_lb_target_group.this.protocol == "HTTP" && aws_lb_target_group.this.target_type == "ip"
    error_message = "targets are the tasks' IPs on 8090"
  }

  assert {
    condition = alltrue([
      one(aws_lb_target_group.this.health_check).enabled,
      one(aws_lb_target_group.this.health_check).path == "/health",
      one(aws_lb_target_group.this.health_check).port == "traffic-port",
      one(aws_lb_target_group.this.health_check).matcher == "200",
      one(aws_lb_target_group.this.health_check).interval <= 15,
    ])
    error_message = "the target group health check must GET /health on 8090 (the traffic port), expect 200, often"
  }

  assert {
    condition     = aws_lb_target_group.this.deregistration_delay > 8 + 10
    error_message = "deregistration delay must exceed the drain and the longest request (TIMEOUT_SECONDS)"
  }

  assert {
    condition     = one(aws_ecs_service.this.load_balancer).container_port == 8090 && one(aws_ecs_service.this.load_balancer).container_name == "embedding-service"
    error_message = "the ECS service registers its tasks' port 8090 in the target group"
  }

  assert {
    condition     = one(aws_ecs_service.this.network_configuration).assign_public_ip == false && toset(one(aws_ecs_service.this.network_configuration).subnets) == toset(var.private_subnet_ids)
    error_message = "tasks run in the private subnets without public IPs"
  }

  assert {
    condition     = output.service_url == "https://embeddings.internal.example.com" && length(aws_route53_record.this) == 0
    error_message = "service URL https://<domain_name>; no DNS record without a zone"
  }
}

run "ingress_only_from_the_given_security_groups" {
  command = plan

  assert {
    condition     = toset([for r in aws_vpc_security_group_ingress_rule.alb_from_callers : r.referenced_security_group_id]) == toset(var.caller_security_group_ids)
    error_message = "one ALB ingress rule per caller security group"
  }

  assert {
    condition     = alltrue([for r in aws_vpc_security_group_ingress_rule.alb_from_callers : r.from_port == 443 && r.to_port == 443 && r.ip_protocol == "tcp" && r.cidr_ipv4 == null && r.cidr_ipv6 == null])
    error_message = "ALB ingress only on 443/tcp and only from security groups, never from CIDRs"
  }

  assert {
    condition = alltrue([
      aws_vpc_security_group_ingress_rule.service_from_alb.referenced_security_group_id == aws_security_group.alb.id,
      aws_vpc_security_group_ingress_rule.service_from_alb.from_port == 8090,
      aws_vpc_security_group_ingress_rule.service_from_alb.to_port == 8090,
      aws_vpc_security_group_ingress_rule.service_from_alb.cidr_ipv4 == null,
    ])
    error_message = "the tasks accept 8090 from the ALB's security group only"
  }

  assert {
    condition = alltrue([
      aws_vpc_security_group_ingress_rule.database_from_service.referenced_security_group_id == aws_security_group.service.id,
      aws_vpc_security_group_ingress_rule.database_from_service.from_port == 5432,
      aws_vpc_security_group_ingress_rule.database_from_service.to_port == 5432,
      aws_vpc_security_group_ingress_rule.database_from_service.cidr_ipv4 == null,
      aws_db_instance.this.vpc_security_group_ids == toset([aws_security_group.database.id]),
    ])
    error_message = "PostgreSQL accepts 5432 from the tasks' security group only"
  }

  assert {
    condition = alltrue([
      aws_vpc_security_group_ingress_rule.redis_from_service.referenced_security_group_id == aws_security_group.service.id,
      aws_vpc_security_group_ingress_rule.redis_from_service.from_port == 6379,
      aws_vpc_security_group_ingress_rule.redis_from_service.to_port == 6379,
      aws_vpc_security_group_ingress_rule.redis_from_service.cidr_ipv4 == null,
      aws_elasticache_replication_group.this.security_group_ids == toset([aws_security_group.redis.id]),
    ])
    error_message = "Redis accepts 6379 from the tasks' security group only"
  }

  assert {
    condition = alltrue([
      aws_vpc_security_group_egress_rule.service_to_database.referenced_security_group_id == aws_security_group.database.id,
      aws_vpc_security_group_egress_rule.service_to_redis.referenced_security_group_id == aws_security_group.redis.id,
      aws_vpc_security_group_egress_rule.service_https.from_port == 443 && aws_vpc_security_group_egress_rule.service_https.to_port == 443,
      aws_vpc_security_group_egress_rule.alb_to_service.referenced_security_group_id == aws_security_group.service.id,
    ])
    error_message = "egress: tasks to 443, PostgreSQL and Redis; the ALB to the tasks only"
  }
}

run "autoscaling" {
  command = plan

  assert {
    condition     = aws_ecs_service.this.desired_count == 2
    error_message = "two tasks at the first deployment"
  }

  assert {
    condition = alltrue([
      aws_appautoscaling_target.this.service_namespace == "ecs",
      aws_appautoscaling_target.this.scalable_dimension == "ecs:service:DesiredCount",
      aws_appautoscaling_target.this.resource_id == "service/hosted/embedding-hosted",
      aws_appautoscaling_target.this.min_capacity == 2,
      aws_appautoscaling_target.this.max_capacity == 6,
    ])
    error_message = "the ECS service's desired count scales between 2 and 6"
  }

  assert {
    condition = alltrue([
      aws_appautoscaling_policy.cpu.policy_type == "TargetTrackingScaling",
      aws_appautoscaling_policy.cpu.resource_id == aws_appautoscaling_target.this.resource_id,
      one(one(aws_appautoscaling_policy.cpu.target_tracking_scaling_policy_configuration).predefined_metric_specification).predefined_metric_type == "ECSServiceAverageCPUUtilization",
      one(aws_appautoscaling_policy.cpu.target_tracking_scaling_policy_configuration).target_value == 60,
    ])
    error_message = "a target-tracking policy keeps the service's average CPU at 60 %"
  }

  assert {
    condition     = length(aws_appautoscaling_policy.requests) == 0
    error_message = "no request-count policy unless requests_per_target is given"
  }
}

run "autoscaling_on_requests_too" {
  command = plan

  variables {
    desired_count       = 3
    min_capacity        = 3
    max_capacity        = 12
    cpu_target_percent  = 50
    requests_per_target = 600
  }

  assert {
    condition     = aws_appautoscaling_target.this.min_capacity == 3 && aws_appautoscaling_target.this.max_capacity == 12 && aws_ecs_service.this.desired_count == 3
    error_message = "the capacity variables reach the scalable target"
  }

  assert {
    condition     = one(aws_appautoscaling_policy.cpu.target_tracking_scaling_policy_configuration).target_value == 50
    error_message = "cpu_target_percent reaches the CPU policy"
  }

  assert {
    condition = alltrue([
      aws_appautoscaling_policy.requests[0].policy_type == "TargetTrackingScaling",
      one(one(aws_appautoscaling_policy.requests[0].target_tracking_scaling_policy_configuration).predefined_metric_specification).predefined_metric_type == "ALBRequestCountPerTarget",
      one(aws_appautoscaling_policy.requests[0].target_tracking_scaling_policy_configuration).target_value == 600,
    ])
    error_message = "requests_per_target adds an ALBRequestCountPerTarget target-tracking policy"
  }
}

run "database" {
  command = plan

  assert {
    condition     = aws_db_instance.this.engine == "postgres" && aws_db_instance.this.engine_version == "16" && aws_db_parameter_group.this.family == "postgres16"
    error_message = "RDS PostgreSQL 16"
  }

  assert {
    condition     = aws_db_instance.this.storage_encrypted && aws_db_instance.this.kms_key_id == aws_kms_key.data.arn && aws_db_instance.this.performance_insights_kms_key_id == aws_kms_key.data.arn
    error_message = "storage and performance insights encrypted with the customer managed key"
  }

  assert {
    condition     = aws_db_instance.this.publicly_accessible == false && toset(aws_db_subnet_group.this.subnet_ids) == toset(var.private_subnet_ids)
    error_message = "the database is not publicly accessible and lives in the private subnets"
  }

  assert {
    condition     = aws_db_instance.this.multi_az && aws_db_instance.this.deletion_protection && aws_db_instance.this.backup_retention_period >= 7 && !aws_db_instance.this.skip_final_snapshot
    error_message = "multi-AZ, deletion protection, backups and a final snapshot"
  }

  assert {
    condition     = contains([for p in aws_db_parameter_group.this.parameter : "${p.name}=${p.value}"], "rds.force_ssl=1")
    error_message = "the database refuses connections without TLS (rds.force_ssl=1)"
  }

  assert {
    condition     = contains([for p in aws_db_parameter_group.this.parameter : "${p.name}=${p.value}"], "log_parameter_max_length=0")
    error_message = "logged statements never carry their bound parameters (tenants' data)"
  }

  assert {
    condition     = toset(keys(module.database_logs)) == toset(aws_db_instance.this.enabled_cloudwatch_logs_exports)
    error_message = "every exported database log goes to a log group made here (encrypted, with a retention)"
  }
}

run "redis" {
  command = plan

  assert {
    condition     = aws_elasticache_replication_group.this.transit_encryption_enabled && aws_elasticache_replication_group.this.at_rest_encryption_enabled && aws_elasticache_replication_group.this.kms_key_id == aws_kms_key.data.arn
    error_message = "Redis encrypted in transit and at rest (customer managed key)"
  }

  assert {
    condition     = length(aws_elasticache_replication_group.this.auth_token) >= 32 && aws_elasticache_replication_group.this.auth_token_update_strategy == "ROTATE"
    error_message = "Redis requires an auth token; a new one is rotated in beside the old one"
  }

  assert {
    condition     = aws_elasticache_replication_group.this.num_cache_clusters == 2 && aws_elasticache_replication_group.this.automatic_failover_enabled && aws_elasticache_replication_group.this.multi_az_enabled
    error_message = "two nodes with automatic failover across availability zones by default"
  }

  assert {
    condition     = aws_elasticache_replication_group.this.snapshot_retention_limit >= 1 && toset(aws_elasticache_subnet_group.this.subnet_ids) == toset(var.private_subnet_ids)
    error_message = "snapshots kept; the private subnets"
  }
}

run "single_redis_node_cannot_fail_over" {
  command = plan

  variables {
    redis_num_cache_clusters = 1
  }

  assert {
    condition     = !aws_elasticache_replication_group.this.automatic_failover_enabled && !aws_elasticache_replication_group.this.multi_az_enabled
    error_message = "automatic failover and Multi-AZ need two nodes"
  }
}

run "options" {
  command = plan

  variables {
    private_zone_id        = "Z0123456789ABCDEFGHIJ"
    metrics_key_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:embedding-hosted/metrics-key-AbCdEf"
    model_name             = "all-MiniLM-L6-v2"
    environment            = { FREE_TIER_COMPUTE = "local", SIGNUP_ENABLED = "false" }
  }

  assert {
    condition     = aws_route53_record.this[0].name == var.domain_name && one(aws_route53_record.this[0].alias).evaluate_target_health
    error_message = "domain_name becomes an alias of the ALB in the given zone"
  }

  assert {
    condition     = contains(jsondecode(aws_ecs_task_definition.this.container_definitions)[0].secrets, { name = "METRICS_KEY", valueFrom = var.metrics_key_secret_arn }) && contains(module.roles.secret_arns, var.metrics_key_secret_arn)
    error_message = "METRICS_KEY comes from its secret, which the execution role may then read"
  }

  assert {
    condition = length(setsubtract(
      ["MODEL_NAME=all-MiniLM-L6-v2", "FREE_TIER_COMPUTE=local", "SIGNUP_ENABLED=false", "HOSTED=true"],
      [for e in jsondecode(aws_ecs_task_definition.this.container_definitions)[0].environment : "${e.name}=${e.value}"],
    )) == 0
    error_message = "model_name and environment reach the container"
  }
}

run "rejects_a_service_open_to_nobody" {
  command = plan

  variables {
    caller_security_group_ids = []
  }

  expect_failures = [var.caller_security_group_ids]
}

run "rejects_min_capacity_above_max_capacity" {
  command = plan

  variables {
    min_capacity = 5
    max_capacity = 3
  }

  expect_failures = [var.max_capacity]
}

run "rejects_a_desired_count_outside_the_capacity" {
  command = plan

  variables {
    desired_count = 8
  }

  expect_failures = [var.desired_count]
}

run "rejects_secrets_in_the_plain_environment" {
  command = plan

  variables {
    environment = { JWT_SECRET = "not-here" }
  }

  expect_failures = [var.environment]
}

run "rejects_a_single_subnet" {
  command = plan

  variables {
    private_subnet_ids = ["subnet-0aaaaaaaaaaaaaaaa"]
  }

  expect_failures = [var.private_subnet_ids]
}
