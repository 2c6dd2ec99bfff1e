variable "namespace" {
  description = "Cloud Map private DNS namespace prefix: the service answers at embedding.<namespace>.local."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", var.namespace))
    error_message = "namespace must be a DNS label (lowercase letters, digits, hyphens)."
  }
}

variable "existing_namespace_id" {
  description = "Id of an existing Cloud Map private DNS namespace named <namespace>.local; null creates one."
  type        = string
  default     = null
}

variable "cluster_arn" {
  description = "ARN of the ECS cluster the events app runs in."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the cluster and of the callers."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets for the task (no public IP is assigned; egress through NAT or VPC endpoints)."
  type        = list(string)
}

variable "caller_security_group_ids" {
  description = "Security groups of the callers (the events app); only they may reach port 8003."
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

variable "api_key_secret_arn" {
  description = "Secrets Manager secret holding the API key callers present (injected as EMBEDDING_API_KEY)."
  type        = string
}

variable "model_name" {
  description = "Model served by this container."
  type        = string
  default     = "all-MiniLM-L6-v2"

  validation {
    condition     = contains(["all-MiniLM-L6-v2", "all-mpnet-base-v2"], var.model_name)
    error_message = "model_name must be all-MiniLM-L6-v2 or all-mpnet-base-v2."
  }
}

variable "desired_count" {
  description = "Number of running tasks."
  type        = number
  default     = 1
}

variable "log_retention_days" {
  description = "Retention of /ecs/embedding-service."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
