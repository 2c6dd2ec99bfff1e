"""deploy/terraform: formatted, valid, its `terraform test` plan checks pass, equal to compose, clean under checkov."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "deploy" / "terraform"
PROVIDER_MIRROR = Path(os.environ.get("TF_PROVIDER_MIRROR", "/opt/tf-plugins"))
# Key-policy false positives, each justified next to its #checkov:skip in main.tf; a new skip must be added here.
ACCEPTED_SKIPS = {"CKV_AWS_109", "CKV_AWS_111", "CKV_AWS_356"}


def tool(name: str, env_var: str) -> str:
    found = os.environ.get(env_var) or shutil.which(name)
    if not found or not Path(found).exists():
        pytest.fail(f"{name} not found: install it (`make tools` for checkov; Terraform >= 1.7 from HashiCorp)")
    return found


@pytest.fixture(scope="module")
def terraform_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Offline where a local provider mirror exists (these machines); the public registry otherwise."""
    home = tmp_path_factory.mktemp("terraform-home")
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1", "TF_DATA_DIR": str(home / "data")}
    config = home / "terraformrc"
    if PROVIDER_MIRROR.is_dir():
        mirror = (
            f'filesystem_mirror {{\n    path = "{PROVIDER_MIRROR}"\n    include = ["registry.terraform.io/*/*"]\n  }}'
        )
        config.write_text(f"provider_installation {{\n  {mirror}\n}}\n")
    else:
        config.write_text("")
    env["TF_CLI_CONFIG_FILE"] = str(config)
    return env


def terraform(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("terraform", "TERRAFORM"), *args, "-no-color"], cwd=cwd, env=env, capture_output=True, text=True
    )


def compose_events_service() -> dict[str, Any]:
    service: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"][
        "embedding-service-events"
    ]
    return service


def module_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "terraform"
    shutil.copytree(MODULE, copy, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    return copy


def test_terraform_is_formatted(terraform_env: dict[str, str]) -> None:
    result = terraform(["fmt", "-check", "-recursive", "-diff", str(MODULE)], ROOT, terraform_env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_terraform_validates_and_its_plan_tests_pass(terraform_env: dict[str, str], tmp_path: Path) -> None:
    """`terraform test` plans with a mocked AWS provider; a generated test pins the compose command on top."""
    module = module_copy(tmp_path)
    service = compose_events_service()
    tests = (module / "tests" / "service.tftest.hcl").read_text()
    mocks = tests[tests.index('mock_provider "aws"') : tests.index("variables {")]
    variables = tests[tests.index("variables {") : tests.index('run "')]
    container = "jsondecode(aws_ecs_task_definition.this.container_definitions)[0]"
    checks = [
        ("command", service["command"], "ECS command differs from docker-compose.yml"),
        ("healthCheck.command", service["healthcheck"]["test"], "ECS health check differs from docker-compose.yml"),
    ]
    asserts = "".join(
        f"  assert {{\n    condition = {container}.{field} == {json.dumps(value)}\n"
        f'    error_message = "{message}"\n  }}\n'
        for field, value, message in checks
    )
    (module / "tests" / "compose.tftest.hcl").write_text(
        f'{mocks}{variables}run "same_as_compose" {{\n  command = plan\n{asserts}}}\n'
    )
    init = terraform(["init", "-backend=false", "-input=false"], module, terraform_env)
    assert init.returncode == 0, init.stdout + init.stderr
    validate = terraform(["validate"], module, terraform_env)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    test = terraform(["test"], module, terraform_env)
    assert test.returncode == 0, test.stdout + test.stderr
    assert 'run "same_as_compose"... pass' in test.stdout
    assert re.search(r"Success! (\d+) passed, 0 failed", test.stdout), test.stdout
    passed = int(re.search(r"(\d+) passed", test.stdout).group(1))  # type: ignore[union-attr]
    assert passed == tests.count('run "') + 1


def test_the_plan_tests_really_catch_a_drift(terraform_env: dict[str, str], tmp_path: Path) -> None:
    module = module_copy(tmp_path)
    main = module / "main.tf"
    main.write_text(main.read_text().replace('cpu                      = "512"', 'cpu                      = "1024"'))
    assert terraform(["init", "-backend=false", "-input=false"], module, terraform_env).returncode == 0
    test = terraform(["test"], module, terraform_env)
    assert test.returncode != 0
    assert "the task must have 512 CPU units and 1024 MB" in test.stdout + test.stderr


def checkov(directory: Path) -> dict[str, Any]:
    result = subprocess.run(
        [tool("checkov", "CHECKOV"), "-d", str(directory), "--framework", "terraform", "-o", "json", "--skip-download"],
        capture_output=True,
        text=True,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_checkov_finds_no_failed_checks() -> None:
    report = checkov(MODULE)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert (summary["failed"], summary["parsing_errors"], failed) == (0, 0, [])
    assert summary["passed"] >= 60 and summary["resource_count"] >= 12
    assert {c["check_id"] for c in report["results"]["skipped_checks"]} == ACCEPTED_SKIPS


def test_checkov_would_catch_a_public_service(tmp_path: Path) -> None:
    module = module_copy(tmp_path)
    main = module / "main.tf"
    main.write_text(main.read_text().replace("assign_public_ip = false", "assign_public_ip = true"))
    failed = {c["check_id"] for c in checkov(module)["results"]["failed_checks"]}
    assert "CKV_AWS_333" in failed  # ECS services should not have public IPs


def test_the_read_only_task_can_write_its_model_volume() -> None:
    """Fargate seeds a bind mount from the image only where the Dockerfile declares VOLUME at that path."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    model_path = re.search(r'model_path\s*=\s*"([^"]+)"', (MODULE / "main.tf").read_text())
    assert model_path is not None
    volume = f'VOLUME ["{model_path.group(1)}"]'
    assert volume in dockerfile
    assert dockerfile.index(f"chown app {model_path.group(1)}") < dockerfile.index(volume) < dockerfile.index("\nUSER ")
    assert '"MODEL_PATH", value = local.model_path' in (MODULE / "main.tf").read_text()
