"""Schema fuzzing: schemathesis generates requests from the service's own OpenAPI document (valid ones and invalid
ones, then sequences of calls) against a real server process in hosted mode (every route: the /embed dialects, the
hosted /v1 routes, accounts and keys, providers, OpenAI's /v1/embeddings and /v1/models, operations) and runs all of
its checks on every answer: no 5xx, every answer and header as documented, valid data accepted, invalid data
refused. A bounded run with a fixed seed (FUZZ_EXAMPLES, FUZZ_SEED) keeps the suite's time budget; README gives the
deeper run. tests/fuzz/schemathesis.toml and tests/fuzz/hooks.py: the few refusals JSON Schema cannot express."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import API_KEY, ServerProcess, hosted_env

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "tests" / "fuzz" / "schemathesis.toml"
EXAMPLES = os.environ.get("FUZZ_EXAMPLES", "25")
SEED = os.environ.get("FUZZ_SEED", "20261124")
PROVIDER = "^/v1/provider$"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("fuzz")
    env = hosted_env(
        EMBEDDING_API_KEY=API_KEY,
        DATA_DIR=str(folder / "data"),
        CACHE_BACKEND="memory",
        FREE_TIER_DAILY_LIMIT="100000",
        FREE_TIER_PER_MINUTE="100000",
        LOGIN_MAX_FAILURES="100000",
    )
    process = ServerProcess(env, folder)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def fuzz(server: ServerProcess, bearer: str, *options: str) -> None:
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{server.base}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        EXAMPLES,
        "--seed",
        SEED,
        "--header",
        f"Authorization: Bearer {bearer}",
        *options,
    ]
    hooks = {"SCHEMATHESIS_HOOKS": "tests.fuzz.hooks", "PYTHONPATH": str(ROOT)}
    env = {**os.environ, **hooks}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=server.cwd)  # its cache
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, f"schemathesis found failures:\n{report}\n--- server log ---\n{server.log()}"
    counted = re.search(r"(\d+) generated, (\d+) passed\n", done.stdout)  # no line at all when none passed
    assert counted is not None and counted[1] == counted[2] and int(counted[1]) > 0, report
    assert "Traceback" not in "\n".join(server.lines), server.log()


def test_every_route_with_a_static_key(server: ServerProcess) -> None:
    fuzz(server, API_KEY)


def test_account_routes_with_a_session_token_and_metered_routes_with_an_accounts_key(server: ServerProcess) -> None:
    account = {"email": "fuzz@example.com", "password": "a fuzzing password"}
    key = httpx.post(f"{server.base}/v1/auth/signup", json=account).json()["api_key"]
    token = httpx.post(f"{server.base}/v1/auth/login", json=account).json()["token"]
    fuzz(server, token, "--exclude-path-regex", PROVIDER)  # the account's keys and usage; others answer it 401
    # Registering a provider is accepted only for an https endpoint on BYOK_ALLOWED_HOSTS (public provider APIs) with
    # a template and JSONPath that work, and it calls that provider: no request generated here can, or may, be
    # accepted, so "valid data is accepted" is off for it alone; every other check runs on its answers.
    fuzz(server, token, "--include-path-regex", PROVIDER, "--exclude-checks", "positive_data_acceptance")
    fuzz(server, key)  # metered embedding, stats and usage
