"""The hosted API (/v1/embed, /v1/embed/batch, /v1/stats) and the cache seen through HTTP, as whole JSON bodies on
the fake embedder: per-tenant entries and counters, cache hits reported without changing the older dialects."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from adapters.fake_embedder import FakeEmbedder
from domain.model import KNOWN_MODELS
from entrypoints.http.app import create_app
from entrypoints.settings import ConfigurationError, Settings
from tests.contract.test_http_contract import as_float32
from tests.support import fake_settings, free_port, wait_ready

SPEC = KNOWN_MODELS["all-mpnet-base-v2"]
KEYS = {"acme": "acme-key-0123456789", "globex": "globex-key-0123456789"}
ACME = {"Authorization": f"Bearer {KEYS['acme']}"}
GLOBEX = {"Authorization": f"Bearer {KEYS['globex']}"}


def vector(text: str) -> list[float]:
    values: list[float] = FakeEmbedder(SPEC).embed([text])[0].tolist()
    return values


def hosted_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"cache_backend": "memory", "tenant_api_keys": KEYS, "max_batch_size": 100}
    values.update(overrides)
    return fake_settings(**values)


@pytest.fixture()
def client() -> Iterator[TestClient]:
    with TestClient(create_app(hosted_settings())) as test_client:
        wait_ready(test_client)
        yield test_client


def hits(response: Any) -> tuple[str, str]:
    return response.headers["x-cache-hits"], response.headers["x-cache-hit-indexes"]


def test_v1_embed_answers_embedding_cached_and_dimensions(client: TestClient) -> None:
    first = client.post("/v1/embed", json={"text": "Ada Lovelace", "model": "all-mpnet-base-v2"}, headers=ACME)
    assert first.status_code == 200
    assert as_float32(first.json()) == {"embedding": vector("Ada Lovelace"), "cached": False, "dimensions": 768}
    assert hits(first) == ("0", "")
    again = client.post("/v1/embed", json={"text": "Ada Lovelace"}, headers=ACME)
    assert as_float32(again.json()) == {"embedding": vector("Ada Lovelace"), "cached": True, "dimensions": 768}
    assert hits(again) == ("1", "0")
    # the fake embedder hashes raw text, so it keys verbatim: a different spelling is a different entry
    other = client.post("/v1/embed", json={"text": "ada lovelace"}, headers=ACME)
    assert as_float32(other.json()) == {"embedding": vector("ada lovelace"), "cached": False, "dimensions": 768}


def test_v1_batch_computes_only_misses_and_says_which_were_cached(client: TestClient) -> None:
    client.post("/v1/embed", json={"text": "market"}, headers=ACME)
    texts = ["jazz", "market", "jazz", "cinema"]
    response = client.post("/v1/embed/batch", json={"texts": texts}, headers=ACME)
    assert response.status_code == 200
    assert as_float32(response.json()) == {
        "embeddings": [vector(t) for t in texts],
        "cached": [False, True, False, False],
        "dimensions": 768,
    }
    assert hits(response) == ("1", "1")
    again = client.post("/v1/embed/batch", json={"texts": texts}, headers=ACME)
    assert again.json()["cached"] == [True, True, True, True]
    assert hits(again) == ("4", "0,1,2,3")


def test_v1_stats_counts_per_tenant(client: TestClient) -> None:
    client.post("/v1/embed/batch", json={"texts": ["a", "b", "a"]}, headers=ACME)
    client.post("/v1/embed/batch", json={"texts": ["a", "c"]}, headers=ACME)
    client.post("/embed", json={"input": "a"}, headers=GLOBEX)
    assert client.get("/v1/stats", headers=ACME).json() == {
        "tenant": "acme",
        "cache": "memory",
        "hits": 1,
        "misses": 3,
        "entries": 3,
        "cache_hits": 1,
        "cache_misses": 3,
        "total_cached": 3,
    }
    assert client.get("/v1/stats", headers=GLOBEX).json() == {
        "tenant": "globex",
        "cache": "memory",
        "hits": 0,
        "misses": 1,
        "entries": 1,
        "cache_hits": 0,
        "cache_misses": 1,
        "total_cached": 1,
    }


def test_tenants_do_not_share_entries(client: TestClient) -> None:
    client.post("/v1/embed", json={"text": "private note"}, headers=ACME)
    other = client.post("/v1/embed", json={"text": "private note"}, headers=GLOBEX)
    assert other.json()["cached"] is False


def test_older_dialects_keep_their_bodies_and_report_hits_in_headers(client: TestClient) -> None:
    single = {"input": "Farmers market", "model": "all-mpnet-base-v2", "encoding_format": "float"}
    expected_single = {
        "object": "list",
        "model": "all-mpnet-base-v2",
        "data": [{"object": "embedding", "embedding": vector("Farmers market"), "index": 0}],
    }
    for expected_hits in (("0", ""), ("1", "0")):
        response = client.post("/embed", json=single, headers=ACME)
        assert as_float32(response.json()) == expected_single
        assert hits(response) == expected_hits

    texts = ["Farmers market", "Jazz night"]
    response = client.post("/embed", json={"texts": texts}, headers=ACME)
    body = response.json()
    body.pop("processing_time_ms")
    assert as_float32(body) == {"embeddings": [vector(t) for t in texts], "model": "all-mpnet-base-v2"}
    assert hits(response) == ("1", "0")

    inputs = [{"id": "r1", "text": "Jazz night"}, {"id": "r2", "text": "Book club"}]
    response = client.post("/embed/batch", json={"inputs": inputs}, headers=ACME)
    assert as_float32(response.json()) == {
        "object": "list",
        "model": "all-mpnet-base-v2",
        "data": [{"id": i["id"], "object": "embedding", "embedding": vector(i["text"])} for i in inputs],
    }
    assert hits(response) == ("1", "0")


def test_v1_validation_errors(client: TestClient) -> None:
    too_many = client.post("/v1/embed/batch", json={"texts": ["x"] * 101}, headers=ACME)
    assert (too_many.status_code, too_many.json()["error"]["type"]) == (413, "batch_too_large")
    empty = client.post("/v1/embed/batch", json={"texts": []}, headers=ACME)
    assert (empty.status_code, empty.json()["error"]["type"]) == (400, "invalid_input")
    missing = client.post("/v1/embed", json={"input": "wrong dialect"}, headers=ACME)
    assert (missing.status_code, missing.json()["error"]["problems"]) == (
        422,
        [{"location": "body.text", "message": "Field required"}],
    )
    unknown = client.post("/v1/embed", json={"text": "x", "model": "all-MiniLM-L6-v2"}, headers=ACME)
    assert (unknown.status_code, unknown.json()["error"]["type"]) == (400, "unknown_model")


def test_sqlite_cache_survives_a_restart(tmp_path: Path) -> None:
    settings = hosted_settings(cache_backend="sqlite", data_dir=tmp_path / "data")
    for expected in (False, True):
        with TestClient(create_app(settings)) as client:
            wait_ready(client)
            response = client.post("/v1/embed", json={"text": "persisted"}, headers=ACME)
            assert response.json()["cached"] is expected
    assert (tmp_path / "data" / "embedding-cache.sqlite3").is_file()


def test_a_cache_database_that_is_down_fails_no_request(caplog: pytest.LogCaptureFixture) -> None:
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    settings = hosted_settings(cache_backend="postgres", cache_url=down, cache_timeout_seconds=1)
    with caplog.at_level(logging.INFO), TestClient(create_app(settings)) as client:
        wait_ready(client)
        for _ in range(2):
            response = client.post("/v1/embed/batch", json={"texts": ["a", "b"]}, headers=ACME)
            assert response.status_code == 200
            assert as_float32(response.json()) == {
                "embeddings": [vector("a"), vector("b")],
                "cached": [False, False],
                "dimensions": 768,
            }
        stats = client.get("/v1/stats", headers=ACME)
        assert (stats.status_code, stats.headers["retry-after"], stats.json()) == (
            503,
            "5",
            {
                "error": {
                    "type": "cache_unavailable",
                    "message": "the embedding cache is unavailable; embeddings are still served, retry stats later.",
                }
            },
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("embedding cache (postgres) prepare failed (OperationalError")


def test_tenant_keys_are_checked_at_start() -> None:
    with pytest.raises(ValueError, match="tenant name 'Acme Corp'"):
        hosted_settings(tenant_api_keys={"Acme Corp": "k"})
    with pytest.raises(ConfigurationError, match="same API key"):
        create_app(hosted_settings(tenant_api_keys={"acme": "same", "globex": "same"}))
    with pytest.raises(ConfigurationError, match="'default' has a key in TENANT_API_KEYS"):
        create_app(hosted_settings(tenant_api_keys={"default": "other"}))
    with pytest.raises(ValueError, match="CACHE_BACKEND=postgres needs CACHE_URL"):
        hosted_settings(cache_backend="postgres")
