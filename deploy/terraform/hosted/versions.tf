terraform {
  # 1.9: variable validations that refer to other variables (min_capacity <= desired_count <= max_capacity).
  required_version = ">= 1.9.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }
}
