"""The PostgreSQL cache going away under a real HTTP server and coming back: every request is answered, nothing
half-written stays behind, and the cache is used again once the database is reachable. Both ways a database goes
away: refusing connections, and a blackhole (connections open, nothing answered)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest

from entrypoints.http.app import create_app
from tests.support import TcpProxy, fake_settings, relayed_database, uvicorn_app

KEY = "acme-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


def cached(base: str, texts: list[str]) -> list[bool]:
    response = httpx.post(f"{base}/v1/embed/batch", json={"texts": texts}, headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    flags: list[bool] = response.json()["cached"]
    return flags


def wait_until_the_cache_is_back(base: str, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while httpx.get(f"{base}/v1/stats", headers=AUTH).status_code != 200:
        assert time.monotonic() < deadline, "the cache did not come back"
        time.sleep(0.05)


@contextmanager
def server_behind_a_relay() -> Iterator[tuple[str, TcpProxy]]:
    """A real server whose PostgreSQL cache (1 s timeout, retried every 0.5 s) is reached through a relay."""
    with relayed_database() as (_, through_proxy, proxy):
        settings = fake_settings(
            cache_backend="postgres",
            cache_url=through_proxy,
            tenant_api_keys={"acme": KEY},
            cache_timeout_seconds=1,
            cache_retry_seconds=0.5,
        )
        with uvicorn_app(create_app(settings)) as (base, _):
            yield base, proxy


def test_requests_go_on_while_the_database_is_down(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="adapters.resilience"), server_behind_a_relay() as (base, proxy):
        assert cached(base, ["before", "also before"]) == [False, False]
        assert cached(base, ["before"]) == [True]

        proxy.cut()
        started = time.monotonic()
        for _ in range(5):
            assert cached(base, ["before", "during"]) == [False, False]
        assert time.monotonic() - started < 5  # after the first failure the dead database is not waited on
        stats = httpx.get(f"{base}/v1/stats", headers=AUTH)
        assert (stats.status_code, stats.json()["error"]["type"]) == (503, "cache_unavailable")

        proxy.start()
        wait_until_the_cache_is_back(base)
        assert cached(base, ["before", "during", "after"]) == [True, False, False]
        assert cached(base, ["during", "after"]) == [True, True]
        assert httpx.get(f"{base}/v1/stats", headers=AUTH).json() == {
            "tenant": "acme",
            "cache": "postgres",
            "hits": 4,
            "misses": 4,
            "entries": 4,
            "cache_hits": 4,
            "cache_misses": 4,
            "total_cached": 4,
        }
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # one line per outage, not one per request
    assert warnings[0].startswith("embedding cache (postgres) lookup failed (OperationalError")
    assert any(r.getMessage().startswith("embedding cache (postgres) is back after") for r in caplog.records)


def test_a_database_that_stops_answering_costs_requests_at_most_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="adapters.resilience"), server_behind_a_relay() as (base, proxy):
        assert cached(base, ["warm", "pool"]) == [False, False]
        assert cached(base, ["warm"]) == [True]

        proxy.blackhole()
        with httpx.Client(timeout=30) as client, ThreadPoolExecutor(8) as pool:

            def embed(text: str) -> tuple[int, float]:
                started = time.monotonic()
                response = client.post(f"{base}/v1/embed", json={"text": text}, headers=AUTH)
                return response.status_code, time.monotonic() - started

            first = list(pool.map(embed, [f"blackholed {i}" for i in range(8)]))
            assert [status for status, _ in first] == [200] * 8
            assert max(elapsed for _, elapsed in first) < 2.5  # the 1 s bound plus this machine's noise
            later = list(pool.map(embed, [f"still blackholed {i}" for i in range(16)]))
            assert [status for status, _ in later] == [200] * 16
            assert max(elapsed for _, elapsed in later) < 1.0  # known down: nobody waits on it again
            assert client.get(f"{base}/health").status_code == 200

        proxy.resume()
        wait_until_the_cache_is_back(base)
        assert cached(base, ["warm", "after"]) == [True, False]
        assert cached(base, ["after"]) == [True]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "(DeadlineExceeded: the database did not answer within 1 s)" in warnings[0]
    assert any(r.getMessage().startswith("embedding cache (postgres) is back after") for r in caplog.records)
