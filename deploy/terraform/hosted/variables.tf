variable "name" {
  description = "Name of the service and prefix of its resources (ALB, target group, ECS service, RDS, ElastiCache, /ecs/<name>)."
  type        = string
  default     = "embedding-hosted"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]*(-[a-z0-9]+)*$", var.name)) && length(var.name) <= 24
    error_message = "name must be at most 24 lowercase letters, digits and single hyphens, starting with a letter (ALB and ElastiCache names are short)."
  }
}

variable "cluster_arn" {
  description = "ARN of the ECS cluster the service runs in."
  type        = string

  validation {
    condition     = can(regex("^arn:[a-z-]+:ecs:[a-z0-9-]+:[0-9]{12}:cluster/[A-Za-z0-9_-]+$", var.cluster_arn))
    error_message = "cluster_arn must be an ECS cluster ARN (arn:aws:ecs:<region>:<account>:cluster/<name>)."
  }
}

variable "vpc_id" {
  description = "VPC of the cluster and of the callers."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets, in at least two availability zones, for the ALB, the tasks, RDS and ElastiCache (no public IPs; egress through NAT or VPC endpoints)."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 2
    error_message = "give at least two private subnets (in two availability zones): the ALB, RDS and ElastiCache subnet groups need them."
  }
}

variable "caller_security_group_ids" {
  description = "Security groups of the callers (API gateway, applications); only they may reach the ALB on 443."
  type        = list(string)

  validation {
    condition     = length(var.caller_security_group_ids) > 0
    error_message = "give at least one caller security group; the service is closed to everything else."
  }
}

variable "image" {
  description = "Container image built from this repository's Dockerfile (e.g. <account>.dkr.ecr.<region>.amazonaws.com/embedding-service:<tag>)."
  type        = string
}

variable "certificate_arn" {
  description = "ACM certificate for domain_name, served by the ALB's HTTPS listener."
  type        = string
}

variable "domain_name" {
  description = "Name the callers use (covered by certificate_arn); the service URL is https://<domain_name>."
  type        = string
}

variable "private_zone_id" {
  description = "Route 53 private hosted zone in which to create domain_name as an alias of the ALB; null: make that record yourself."
  type        = string
  default     = null
}

variable "alb_access_logs_bucket" {
  description = "Existing S3 bucket (SSE-S3, with the ELB log delivery bucket policy) receiving the ALB access logs under <name>/."
  type        = string
}

variable "jwt_secret_arn" {
  description = "Secrets Manager secret holding JWT_SECRET (`embedding-service keygen`); the same for every task."
  type        = string
}

variable "encryption_key_secret_arn" {
  description = "Secrets Manager secret holding ENCRYPTION_KEY (`embedding-service keygen --fernet`; comma-separated keys while rotating)."
  type        = string
}

variable "metrics_key_secret_arn" {
  description = "Optional Secrets Manager secret holding METRICS_KEY: GET /metrics then needs that bearer key; null: /metrics is open to the callers, like /health."
  type        = string
  default     = null
}

variable "secrets_kms_key_arns" {
  description = "Customer managed KMS keys encrypting the secrets above, if any (the execution role decrypts with them through Secrets Manager only)."
  type        = list(string)
  default     = []
}

variable "model_name" {
  description = "Model served (MODEL_NAME)."
  type        = string
  default     = "all-mpnet-base-v2"

  validation {
    condition     = contains(["all-mpnet-base-v2", "all-MiniLM-L6-v2"], var.model_name)
    error_message = "model_name must be all-mpnet-base-v2 or all-MiniLM-L6-v2."
  }
}

variable "environment" {
  description = "More settings of the service (README, Configuration), e.g. { FREE_TIER_COMPUTE = \"byok\", SIGNUP_ENABLED = \"false\" }. Not for secrets, nor for the variables this module sets."
  type        = map(string)
  default     = {}

  validation {
    condition = length(setintersection(keys(var.environment), [
      "MODEL_NAME", "MODEL_PATH", "MAX_WORKERS", "HF_HOME", "TMPDIR", "HOSTED", "CACHE_BACKEND", "METRICS_ENABLED",
      "SHUTDOWN_DRAIN_SECONDS", "KEEP_ALIVE_SECONDS", "JWT_SECRET", "ENCRYPTION_KEY", "DATABASE_URL", "REDIS_URL", "METRICS_KEY", "CACHE_URL",
      "EMBEDDING_API_KEY", "PEOPLEPAD_CLIENT_KEY", "TENANT_API_KEYS", "HF_TOKEN", "PORT", "HOST",
    ])) == 0
    error_message = "environment may not set what this module sets (model, paths, hosted mode, drain) nor any secret: secrets come from Secrets Manager."
  }
}

variable "task_cpu" {
  description = "CPU units of a task (2048 = 2 vCPU); the onnx backend uses them all within one model call."
  type        = number
  default     = 2048
}

variable "task_memory" {
  description = "Memory of a task in MiB (mpnet peaks at ~0.75 GB once its export exists; the first start, which exports it, higher)."
  type        = number
  default     = 4096
}

variable "desired_count" {
  description = "Tasks at the first deployment; from then on the autoscaling policies own the count (between min_capacity and max_capacity)."
  type        = number
  default     = 2

  validation {
    condition     = var.desired_count >= var.min_capacity && var.desired_count <= var.max_capacity
    error_message = "desired_count must be within min_capacity and max_capacity."
  }
}

variable "min_capacity" {
  description = "Fewest tasks (2 or more keeps the service up while a task is replaced or an availability zone fails)."
  type        = number
  default     = 2

  validation {
    condition     = var.min_capacity >= 1
    error_message = "min_capacity must be at least 1."
  }
}

variable "max_capacity" {
  description = "Most tasks the autoscaling policies may run; each holds database connections (pool 5 + overflow 5)."
  type        = number
  default     = 6

  validation {
    condition     = var.max_capacity >= var.min_capacity
    error_message = "max_capacity must not be below min_capacity."
  }
}

variable "cpu_target_percent" {
  description = "Average CPU of the service the target-tracking policy keeps (model calls are CPU bound: queues grow past ~70 %)."
  type        = number
  default     = 60

  validation {
    condition     = var.cpu_target_percent >= 10 && var.cpu_target_percent <= 90
    error_message = "cpu_target_percent must be between 10 and 90."
  }
}

variable "requests_per_target" {
  description = "Optional second target-tracking policy: ALB requests per task per minute to keep; null: CPU only."
  type        = number
  default     = null
}

variable "health_check_grace_period_seconds" {
  description = "Seconds ECS ignores the ALB health check of a new task: its first start downloads and verifies the model."
  type        = number
  default     = 300
}

variable "db_instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_engine_version" {
  description = "PostgreSQL major version (minor versions are upgraded automatically)."
  type        = string
  default     = "16"

  validation {
    condition     = can(regex("^1[4-9]$", var.db_engine_version))
    error_message = "db_engine_version must be a PostgreSQL major version from 14 on, e.g. \"16\"."
  }
}

variable "db_allocated_storage" {
  description = "Initial storage in GiB (grows automatically up to db_max_allocated_storage)."
  type        = number
  default     = 20
}

variable "db_max_allocated_storage" {
  description = "Storage autoscaling limit in GiB (the embedding cache grows with the texts embedded)."
  type        = number
  default     = 200
}

variable "db_multi_az" {
  description = "A synchronous standby in a second availability zone."
  type        = bool
  default     = true
}

variable "db_backup_retention_days" {
  description = "Days of automated backups (point-in-time recovery)."
  type        = number
  default     = 14

  validation {
    condition     = var.db_backup_retention_days >= 1
    error_message = "keep backups: db_backup_retention_days must be at least 1."
  }
}

variable "redis_node_type" {
  description = "ElastiCache node type."
  type        = string
  default     = "cache.t4g.small"
}

variable "redis_engine_version" {
  description = "Redis engine version."
  type        = string
  default     = "7.1"
}

variable "redis_num_cache_clusters" {
  description = "Redis nodes (a primary and replicas); 2 or more enables automatic failover and Multi-AZ."
  type        = number
  default     = 2

  validation {
    condition     = var.redis_num_cache_clusters >= 1 && var.redis_num_cache_clusters <= 6
    error_message = "redis_num_cache_clusters must be between 1 and 6."
  }
}

variable "redis_snapshot_retention_days" {
  description = "Days of daily Redis snapshots."
  type        = number
  default     = 7
}

variable "redis_auth_token_update_strategy" {
  description = "How a new Redis auth token is applied: ROTATE (the old one stays accepted beside it, so running tasks keep working), then SET once every task uses the new one (drops the old)."
  type        = string
  default     = "ROTATE"

  validation {
    condition     = contains(["ROTATE", "SET"], var.redis_auth_token_update_strategy)
    error_message = "redis_auth_token_update_strategy must be ROTATE or SET."
  }
}

variable "apply_immediately" {
  description = "Apply database and Redis changes now instead of in the next maintenance window (needed to change the Redis auth token)."
  type        = bool
  default     = false
}

variable "deletion_protection" {
  description = "Protect the ALB and the database from deletion (turn off, apply, then destroy, to remove the stack)."
  type        = bool
  default     = true
}

variable "log_retention_days" {
  description = "Retention of /ecs/<name> and of the database's exported logs."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
