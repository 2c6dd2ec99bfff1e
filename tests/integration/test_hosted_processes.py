"""Hosted mode across real server processes on one PostgreSQL database and one Redis: the daily quota is shared,
a key revoked through one process is refused by the other at once, and SIGTERM writes the buffered usage."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support import ServerProcess as Server
from tests.support import hosted_env, postgres_database

REDIS_URL = "redis://127.0.0.1:6379/0"
PASSWORD = "correct horse battery staple"


def database_env(database_url: str, **overrides: str) -> dict[str, str]:
    return hosted_env(
        **{"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "USAGE_FLUSH_SECONDS": "0.5", **overrides}
    )


@contextmanager
def servers(env: dict[str, str], tmp_path: Path, count: int) -> Iterator[list[Server]]:
    """`count` servers on `env`, started together, ready once yielded; always stopped afterwards."""
    with ExitStack() as stack:
        started: list[Server] = []
        for index in range(count):
            server = Server(env, tmp_path / f"server-{uuid.uuid4().hex[:6]}-{index}")
            stack.callback(server.stop)
            started.append(server)
        for server in started:
            server.wait_ready()
        yield started


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sign_up(base: str) -> tuple[str, str]:
    email = f"user-{uuid.uuid4().hex[:10]}@example.com"
    response = httpx.post(f"{base}/v1/auth/signup", json={"email": email, "password": PASSWORD}, timeout=30)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["user_id"].startswith("usr_") and body["api_key"].startswith("vec_")
    return email, body["api_key"]


def log_in(base: str, email: str) -> str:
    response = httpx.post(f"{base}/v1/auth/login", json={"email": email, "password": PASSWORD}, timeout=30)
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def usage_totals(base: str, credential: str) -> dict[str, Any]:
    """Today's totals for an API key or a session token (a key is refused once its daily quota is spent)."""
    response = httpx.get(f"{base}/v1/usage", params={"days": 1}, headers=bearer(credential), timeout=30)
    assert response.status_code == 200, response.text
    totals: dict[str, Any] = response.json()["totals"]
    return totals


def test_two_processes_share_one_daily_limit(tmp_path: Path) -> None:
    with postgres_database() as database_url:
        env = database_env(database_url, FREE_TIER_DAILY_LIMIT="500", FREE_TIER_PER_MINUTE="100000")
        with servers(env, tmp_path, 2) as (first, second):
            email, api_key = sign_up(first.base)
            run = uuid.uuid4().hex

            def send(index: int) -> httpx.Response:
                base = (first, second)[index % 2].base
                texts = [f"text {run} {index}-{n}" for n in range(10)]
                return httpx.post(f"{base}/v1/embed/batch", json={"texts": texts}, headers=bearer(api_key), timeout=60)

            with ThreadPoolExecutor(max_workers=16) as pool:
                responses = list(pool.map(send, range(70)))

            statuses = [response.status_code for response in responses]
            assert sorted(set(statuses)) == [200, 429], (statuses, first.log(), second.log())
            assert (statuses.count(200), statuses.count(429)) == (50, 20), statuses
            assert 200 in statuses[0::2] and 200 in statuses[1::2], statuses
            for refused in (response for response in responses if response.status_code == 429):
                assert refused.json()["error"]["type"] == "rate_limited"
                assert int(refused.headers["Retry-After"]) > 0

            token = log_in(first.base, email)
            for server in (first, second):
                deadline = time.monotonic() + 8
                while (totals := usage_totals(server.base, token))["texts"] != 500 and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert (totals["texts"], totals["requests"]) == (500, 50), (server.base, totals)


def test_a_key_revoked_through_one_process_is_refused_by_the_other(tmp_path: Path) -> None:
    with postgres_database() as database_url, servers(database_env(database_url), tmp_path, 2) as (first, second):
        email, first_key = sign_up(first.base)
        token = log_in(first.base, email)
        created = httpx.post(f"{first.base}/v1/keys", headers=bearer(token), timeout=30)
        assert created.status_code == 201, created.text
        second_key, prefix = created.json()["api_key"], created.json()["prefix"]

        def embed_on_second(key: str) -> int:
            response = httpx.post(f"{second.base}/v1/embed", json={"text": "hello"}, headers=bearer(key), timeout=30)
            return response.status_code

        assert embed_on_second(second_key) == 200
        revoked = httpx.delete(f"{first.base}/v1/keys/{prefix}", headers=bearer(token), timeout=30)
        assert (revoked.status_code, revoked.json()) == (200, {"revoked": True})
        assert embed_on_second(second_key) == 401, second.log()
        assert embed_on_second(first_key) == 200


def test_sigterm_writes_buffered_usage(tmp_path: Path) -> None:
    with postgres_database() as database_url:
        env = database_env(database_url, USAGE_FLUSH_SECONDS="3600")
        with servers(env, tmp_path, 1) as (server,):
            _, api_key = sign_up(server.base)
            for texts in (["one"], ["two", "three"], ["four", "five", "six"]):
                response = httpx.post(
                    f"{server.base}/v1/embed/batch", json={"texts": texts}, headers=bearer(api_key), timeout=30
                )
                assert response.status_code == 200, response.text
            embedded = httpx.post(
                f"{server.base}/v1/embed", json={"text": "seven"}, headers=bearer(api_key), timeout=30
            )
            assert embedded.status_code == 200, embedded.text
            assert server.stop() in (0, -signal.SIGTERM), server.log()
            assert any("Application shutdown complete" in line for line in server.lines), server.log()

        with servers(env, tmp_path, 1) as (restarted,):
            totals = usage_totals(restarted.base, api_key)
            assert (totals["requests"], totals["texts"]) == (4, 7), totals
