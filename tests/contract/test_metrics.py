"""GET /metrics through HTTP on the fake embedder: off by default, guarded by METRICS_KEY, and its counters (parsed
with prometheus_client's own parser) moving with the requests, model calls, cache lookups and refusals."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from adapters.fake_embedder import FakeEmbedder
from domain.model import KNOWN_MODELS
from entrypoints.http.app import create_app
from tests.contract.test_accounts_api import hosted_settings, signup
from tests.support import AUTH, fake_settings, wait_ready

SPEC = KNOWN_MODELS["all-mpnet-base-v2"]
METRICS_KEY = "metrics-key-0123456789"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient, headers: dict[str, str] | None = None) -> Samples:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@contextmanager
def serving(**overrides: Any) -> Iterator[TestClient]:
    with TestClient(create_app(fake_settings(**overrides))) as client:
        wait_ready(client)
        yield client


def test_metrics_are_off_by_default() -> None:
    with serving() as client:
        response = client.get("/metrics")
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found"


def test_metrics_key_is_required_when_set() -> None:
    with serving(metrics_enabled=True, metrics_key=METRICS_KEY) as client:
        for headers in ({}, {"Authorization": "Bearer wrong-key"}, AUTH, {"Authorization": METRICS_KEY}):
            refused = client.get("/metrics", headers=headers)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
            assert refused.json() == {
                "error": {
                    "type": "unauthenticated",
                    "message": "missing or invalid metrics key; send 'Authorization: Bearer <METRICS_KEY>'.",
                }
            }
        samples = scrape(client, {"Authorization": f"Bearer {METRICS_KEY}"})
        assert value(samples, "embedding_http_requests_total", route="/health", method="GET", status="200") >= 1
        assert not any(dict(labels).get("route") == "/metrics" for _, labels in samples)  # not counted itself


def test_metrics_are_open_without_a_key() -> None:
    with serving(metrics_enabled=True) as client:
        assert client.get("/metrics").status_code == 200


def test_counters_move_with_requests_model_calls_and_cache_lookups() -> None:
    with serving(metrics_enabled=True, cache_backend="memory", max_body_bytes=4096) as client:
        before = scrape(client)
        assert value(before, "embedding_texts_embedded_total", model=SPEC.name) == 0  # a registry of its own
        assert value(before, "embedding_model_load_seconds", model=SPEC.name) > 0

        assert client.post("/v1/embed", json={"text": "jazz night"}, headers=AUTH).status_code == 200
        assert client.post("/v1/embed", json={"text": "jazz night"}, headers=AUTH).status_code == 200  # a hit
        batch = ["jazz night", "farmers market", "farmers market", "open air cinema"]
        assert client.post("/v1/embed/batch", json={"texts": batch}, headers=AUTH).status_code == 200
        assert client.post("/v1/embed", json={"text": "x"}).status_code == 401
        assert client.post("/v1/embed", json={"text": "x" * 5000}, headers=AUTH).status_code == 413  # before routing
        assert client.get("/v1/keys/vec_0123456789abcdef").status_code == 404
        assert client.get(f"/v1/models/{SPEC.hub_id}", headers=AUTH).status_code == 200
        assert client.post("/v1/embeddings/x" * 3, json={}, headers=AUTH).status_code == 404
        after = scrape(client)

    def requests(route: str, status: int, method: str = "POST") -> float:
        return value(after, "embedding_http_requests_total", route=route, method=method, status=str(status))

    assert requests("/v1/embed", 200) == 2
    assert requests("/v1/embed/batch", 200) == 1
    assert requests("/v1/embed", 401) == 1
    assert requests("/v1/embed", 413) == 1
    assert requests("unmatched", 404, "GET") == 1  # never the path itself
    assert requests("/v1/models/{model}", 200, "GET") == 1  # the template as written, without its converter
    assert requests("unmatched", 404) == 1
    seconds = "embedding_http_request_duration_seconds_count"
    assert value(after, seconds, route="/v1/embed", method="POST") == 4
    assert value(after, seconds, route="/v1/embed/batch", method="POST") == 1

    computed = ["jazz night", "farmers market", "open air cinema"]  # hits and repeats are not model work
    assert value(after, "embedding_texts_embedded_total", model=SPEC.name) == 3
    assert value(after, "embedding_tokens_embedded_total", model=SPEC.name) == sum(
        FakeEmbedder(SPEC).token_counts(computed)
    )
    assert value(after, "embedding_model_batch_size_count") == 2  # one call per request that missed
    assert value(after, "embedding_model_batch_size_sum") == 3
    assert value(after, "embedding_model_call_seconds_count") == 2
    assert value(after, "embedding_queue_texts") == 0
    # per distinct text looked up: miss; hit; the batch's three distinct texts: one hit, two misses
    assert value(after, "embedding_cache_hits_total") == 2
    assert value(after, "embedding_cache_misses_total") == 3
    assert value(after, "embedding_model_load_seconds", model=SPEC.name) == value(
        before, "embedding_model_load_seconds", model=SPEC.name
    )


def test_without_a_cache_no_lookup_is_counted() -> None:
    with serving(metrics_enabled=True) as client:
        assert client.post("/v1/embed/batch", json={"texts": ["a", "b"]}, headers=AUTH).status_code == 200
        after = scrape(client)
    assert value(after, "embedding_texts_embedded_total", model=SPEC.name) == 2
    assert value(after, "embedding_cache_hits_total") == value(after, "embedding_cache_misses_total") == 0


@pytest.mark.parametrize(
    ("window", "limits"), [("minute", {"free_tier_per_minute": 2}), ("day", {"free_tier_daily_limit": 2})]
)
def test_rate_limited_requests_are_counted_by_window(tmp_path: Path, window: str, limits: dict[str, int]) -> None:
    settings = hosted_settings(tmp_path, metrics_enabled=True, **limits)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        key = {"Authorization": f"Bearer {signup(client)}"}
        statuses = [client.post("/v1/embed", json={"text": f"text {i}"}, headers=key).status_code for i in range(3)]
        assert statuses == [200, 200, 429]
        samples = scrape(client)
    assert value(samples, "embedding_rate_limited_total", window=window) == 1
    assert value(samples, "embedding_http_requests_total", route="/v1/embed", method="POST", status="429") == 1
    assert value(samples, "embedding_texts_embedded_total", model=SPEC.name) == 2
