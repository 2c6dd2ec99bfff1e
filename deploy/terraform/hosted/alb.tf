# Internal HTTPS load balancer in the private subnets. TLS ends here; the hop to the task (8090, HTTP) stays in the
# VPC, allowed only from this load balancer's security group.

resource "aws_lb" "this" {
  name                       = var.name
  internal                   = true
  load_balancer_type         = "application"
  security_groups            = [aws_security_group.alb.id]
  subnets                    = var.private_subnet_ids
  drop_invalid_header_fields = true
  enable_deletion_protection = var.deletion_protection
  desync_mitigation_mode     = "defensive"
  # Above TIMEOUT_SECONDS (10 s), the longest the service takes to answer an admitted request, and below the
  # tasks' KEEP_ALIVE_SECONDS (main.tf).
  idle_timeout = local.alb_idle_timeout_seconds

  access_logs {
    bucket  = var.alb_access_logs_bucket
    prefix  = var.name
    enabled = true
  }

  tags = var.tags
}

resource "aws_lb_target_group" "this" {
  name        = var.name
  port        = local.port
  protocol    = "HTTP"
  target_type = "ip"
  vpc_id      = var.vpc_id

  # ECS waits this long after taking a task out (no new requests; those in flight finish, each within
  # TIMEOUT_SECONDS) before it sends SIGTERM; the service then drains what is left within drain_seconds.
  deregistration_delay = 30

  # /health answers 200 once the model is loaded and 503 while the service drains (README, "Graceful shutdown").
  health_check {
    enabled             = true
    path                = "/health"
    port                = "traffic-port"
    protocol            = "HTTP"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }

  tags = var.tags
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this.arn
  }

  tags = var.tags
}

resource "aws_route53_record" "this" {
  count = var.private_zone_id == null ? 0 : 1

  zone_id = var.private_zone_id
  name    = var.domain_name
  type    = "A"

  alias {
    name                   = aws_lb.this.dns_name
    zone_id                = aws_lb.this.zone_id
    evaluate_target_health = true
  }
}
