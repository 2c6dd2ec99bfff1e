"""deploy/terraform/hosted (the hosted service on ECS behind an internal ALB, RDS, ElastiCache): valid, its `terraform
test` plan checks pass and catch a drift, equal to compose's embedding-service-hosted, clean under checkov with only
justified skips, and checkov would catch a public or unencrypted data store. Formatting: test_terraform.py (it
checks deploy/terraform recursively)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.contract.test_terraform import (
    ACCEPTED_SKIPS,
    checkov,
    init_validate_and_test,
    module_copy,
    terraform,
    terraform_cli_env,
    write_compose_test,
)
from tests.contract.test_terraform import MODULE as TERRAFORM

HOSTED = TERRAFORM / "hosted"
# The key-policy skips of the events root (the same justification, on the hosted data key and the shared log group
# module), and rotation of the two URL secrets, which Terraform builds and rotates itself (justified in data.tf).
HOSTED_ACCEPTED_SKIPS = ACCEPTED_SKIPS | {"CKV2_AWS_57"}


@pytest.fixture(scope="module")
def terraform_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return terraform_cli_env(tmp_path_factory.mktemp("terraform-home"))


def replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found once in {path.name}"
    path.write_text(text.replace(old, new))


def test_hosted_root_validates_and_its_plan_tests_pass(terraform_env: dict[str, str], tmp_path: Path) -> None:
    """Plans with a mocked AWS provider (and, for the IAM documents, the real one offline); a generated run pins the
    container's command and health check to docker-compose.yml's embedding-service-hosted."""
    module = module_copy(tmp_path) / "hosted"
    runs = write_compose_test(module, "hosted.tftest.hcl", "embedding-service-hosted")
    init_validate_and_test(module, terraform_env, runs)


def test_the_hosted_plan_tests_really_catch_a_drift(terraform_env: dict[str, str], tmp_path: Path) -> None:
    """A public load balancer fails the run that checks it (the other runs are left out: they take time)."""
    module = module_copy(tmp_path) / "hosted"
    tests = module / "tests" / "hosted.tftest.hcl"
    text = tests.read_text()
    header, *runs = text.split('\nrun "')
    tests.write_text('\nrun "'.join([header, *(r for r in runs if r.startswith('internal_load_balancer"'))]))
    replace_once(module / "alb.tf", "internal                   = true", "internal                   = false")
    assert terraform(["init", "-backend=false", "-input=false"], module, terraform_env).returncode == 0
    test = terraform(["test"], module, terraform_env)
    assert test.returncode != 0
    assert "the load balancer must be an internal application load balancer" in test.stdout + test.stderr


def test_checkov_finds_no_failed_checks_in_the_hosted_root() -> None:
    report = checkov(HOSTED)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert (summary["failed"], summary["parsing_errors"], failed) == (0, 0, [])
    assert summary["passed"] >= 200 and summary["resource_count"] >= 40
    skipped = report["results"]["skipped_checks"]
    assert {c["check_id"] for c in skipped} == HOSTED_ACCEPTED_SKIPS
    # Each skip says why, next to it.
    reasons = {(c["check_id"], c["resource"]): c["check_result"].get("suppress_comment") or "" for c in skipped}
    assert all(len(reason) >= 40 for reason in reasons.values()), reasons


def test_checkov_would_catch_public_or_unencrypted_data_stores(tmp_path: Path) -> None:
    module = module_copy(tmp_path) / "hosted"
    data = module / "data.tf"
    replace_once(data, "publicly_accessible    = false", "publicly_accessible    = true")
    replace_once(data, "storage_encrypted     = true", "storage_encrypted     = false")
    replace_once(data, "transit_encryption_enabled = true", "transit_encryption_enabled = false")
    replace_once(module / "alb.tf", "internal                   = true", "internal                   = false")
    failed = {(c["check_id"], c["resource"]) for c in checkov(module)["results"]["failed_checks"]}
    assert ("CKV_AWS_17", "aws_db_instance.this") in failed  # RDS publicly accessible
    assert ("CKV_AWS_16", "aws_db_instance.this") in failed  # RDS storage not encrypted
    assert ("CKV_AWS_30", "aws_elasticache_replication_group.this") in failed  # Redis without TLS
    assert ("CKV2_AWS_28", "aws_lb.this") in failed  # an internet-facing ALB without WAF
