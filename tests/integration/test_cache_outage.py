"""The PostgreSQL cache going away under a real HTTP server and coming back: every request is answered, nothing
half-written stays behind, and the cache is used again once the database is reachable."""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit

import httpx
import pytest

from entrypoints.http.app import create_app
from tests.support import TcpProxy, fake_settings, postgres_database, uvicorn_app

KEY = "acme-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


def cached(base: str, texts: list[str]) -> list[bool]:
    response = httpx.post(f"{base}/v1/embed/batch", json={"texts": texts}, headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    flags: list[bool] = response.json()["cached"]
    return flags


def test_requests_go_on_while_the_database_is_down(caplog: pytest.LogCaptureFixture) -> None:
    with postgres_database() as url:
        parts = urlsplit(url)
        proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
        proxy.start()
        through_proxy = parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl()
        settings = fake_settings(
            cache_backend="postgres",
            cache_url=through_proxy,
            tenant_api_keys={"acme": KEY},
            cache_timeout_seconds=1,
            cache_retry_seconds=0.5,
        )
        with caplog.at_level(logging.INFO, logger="domain.services"), uvicorn_app(create_app(settings)) as (base, _):
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
            time.sleep(0.6)
            assert cached(base, ["before", "during", "after"]) == [True, False, False]
            assert cached(base, ["during", "after"]) == [True, True]
            assert httpx.get(f"{base}/v1/stats", headers=AUTH).json() == {
                "tenant": "acme",
                "cache": "postgres",
                "hits": 4,
                "misses": 4,
                "entries": 4,
            }
        proxy.cut()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # one line per outage, not one per request
    assert warnings[0].startswith("embedding cache (postgres) lookup failed (OperationalError")
    assert any(r.getMessage().startswith("embedding cache (postgres) is back after") for r in caplog.records)
