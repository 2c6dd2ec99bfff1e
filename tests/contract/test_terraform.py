"""deploy/terraform (the events root): formatted, valid, its `terraform test` plan checks pass, equal to compose, clean
under checkov. The helpers here serve test_terraform_hosted.py too (the hosted root, deploy/terraform/hosted)."""

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
# Key-policy false positives, each justified next to its #checkov:skip in modules/log_group/main.tf; a new skip must
# be added here.
ACCEPTED_SKIPS = {"CKV_AWS_109", "CKV_AWS_111", "CKV_AWS_356"}


def tool(name: str, env_var: str) -> str:
    found = os.environ.get(env_var) or shutil.which(name)
    if not found or not Path(found).exists():
        pytest.fail(f"{name} not found: install it (`make tools` for checkov; Terraform >= 1.7 from HashiCorp)")
    return found


def terraform_cli_env(home: Path) -> dict[str, str]:
    """Offline where a local provider mirror exists (these machines); the public registry otherwise."""
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


@pytest.fixture(scope="module")
def terraform_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return terraform_cli_env(tmp_path_factory.mktemp("terraform-home"))


def terraform(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("terraform", "TERRAFORM"), *args, "-no-color"], cwd=cwd, env=env, capture_output=True, text=True
    )


def compose_service(name: str) -> dict[str, Any]:
    service: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"][name]
    return service


def seconds(duration: str) -> int:
    """A compose duration as ECS takes it: "30s" -> 30, "2m" -> 120."""
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert match and duration, f"unexpected compose duration {duration!r}"
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


def write_compose_test(module: Path, tests_file: str, service_name: str) -> int:
    """Write tests/compose.tftest.hcl into the copy `module`: the providers, overrides and variables of `tests_file`
    and one run pinning the container's command and health check to the compose service. Returns the runs of
    `tests_file`."""
    service = compose_service(service_name)
    tests = (module / "tests" / tests_file).read_text()
    header = tests[: tests.index('run "')]
    container = "jsondecode(aws_ecs_task_definition.this.container_definitions)[0]"
    healthcheck = service["healthcheck"]
    checks = [
        ("command", service["command"], "ECS command differs from docker-compose.yml"),
        ("healthCheck.command", healthcheck["test"], "ECS health check differs from docker-compose.yml"),
        ("healthCheck.interval", seconds(healthcheck["interval"]), "health check interval differs from compose"),
        ("healthCheck.timeout", seconds(healthcheck["timeout"]), "health check timeout differs from compose"),
        ("healthCheck.retries", healthcheck["retries"], "health check retries differ from compose"),
        ("healthCheck.startPeriod", seconds(healthcheck["start_period"]), "health check start period differs"),
    ]
    asserts = "".join(
        f"  assert {{\n    condition = {container}.{field} == {json.dumps(value)}\n"
        f'    error_message = "{message}"\n  }}\n'
        for field, value, message in checks
    )
    (module / "tests" / "compose.tftest.hcl").write_text(
        f'{header}run "same_as_compose" {{\n  command = plan\n{asserts}}}\n'
    )
    return tests.count('run "')


def init_validate_and_test(module: Path, env: dict[str, str], runs: int) -> None:
    """`terraform init -backend=false`, `validate` and `test` in `module`: every run passes, the generated one too."""
    init = terraform(["init", "-backend=false", "-input=false"], module, env)
    assert init.returncode == 0, init.stdout + init.stderr
    validate = terraform(["validate"], module, env)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    test = terraform(["test"], module, env)
    assert test.returncode == 0, test.stdout + test.stderr
    assert 'run "same_as_compose"... pass' in test.stdout
    assert re.search(r"Success! (\d+) passed, 0 failed", test.stdout), test.stdout
    passed = int(re.search(r"(\d+) passed", test.stdout).group(1))  # type: ignore[union-attr]
    assert passed == runs + 1


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
    runs = write_compose_test(module, "service.tftest.hcl", "embedding-service-events")
    init_validate_and_test(module, terraform_env, runs)


def test_the_plan_tests_really_catch_a_drift(terraform_env: dict[str, str], tmp_path: Path) -> None:
    module = module_copy(tmp_path)
    main = module / "main.tf"
    main.write_text(main.read_text().replace('cpu                      = "512"', 'cpu                      = "1024"'))
    assert terraform(["init", "-backend=false", "-input=false"], module, terraform_env).returncode == 0
    test = terraform(["test"], module, terraform_env)
    assert test.returncode != 0
    assert "the task must have 512 CPU units and 1024 MB" in test.stdout + test.stderr


def checkov(directory: Path, *options: str) -> dict[str, Any]:
    result = subprocess.run(
        [
            tool("checkov", "CHECKOV"),
            "-d",
            str(directory),
            *options,
            "--framework",
            "terraform",
            "-o",
            "json",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_checkov_finds_no_failed_checks() -> None:
    """The events root with the shared modules it calls; the hosted root has its own scan (test_terraform_hosted.py):
    one scan of both would merge the modules' resources of the two roots."""
    report = checkov(MODULE, "--skip-path", "hosted")
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert (summary["failed"], summary["parsing_errors"], failed) == (0, 0, [])
    assert summary["passed"] >= 60 and summary["resource_count"] >= 12
    assert {c["check_id"] for c in report["results"]["skipped_checks"]} == ACCEPTED_SKIPS


def test_checkov_would_catch_a_public_service(tmp_path: Path) -> None:
    module = module_copy(tmp_path)
    main = module / "main.tf"
    main.write_text(main.read_text().replace("assign_public_ip = false", "assign_public_ip = true"))
    failed = {c["check_id"] for c in checkov(module, "--skip-path", "hosted")["results"]["failed_checks"]}
    assert "CKV_AWS_333" in failed  # ECS services should not have public IPs


@pytest.mark.parametrize("root", ["events", "hosted"])
def test_the_read_only_task_can_write_its_model_volume(root: str) -> None:
    """Fargate seeds a bind mount from the image only where the Dockerfile declares VOLUME at that path."""
    main = (MODULE / "main.tf" if root == "events" else MODULE / root / "main.tf").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    model_path = re.search(r'model_path\s*=\s*"([^"]+)"', main)
    assert model_path is not None
    volume = f'VOLUME ["{model_path.group(1)}"]'
    assert volume in dockerfile
    assert dockerfile.index(f"chown app {model_path.group(1)}") < dockerfile.index(volume) < dockerfile.index("\nUSER ")
    assert '"MODEL_PATH", value = local.model_path' in main
    assert 'sourceVolume = "models", containerPath = local.model_path, readOnly = false' in main
    assert "readonlyRootFilesystem = true" in main
