"""EmbeddingClient against the real app on the fake backend (and a scripted HTTP fake for 429s/outages)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from dependency_injector import providers
from fastapi.testclient import TestClient

from adapters.fake_embedder import FakeEmbedder, FakeEmbedderLoader
from domain.model import KNOWN_MODELS, ModelSpec
from embedding_client import (
    ClientConfigurationError,
    EmbeddingClient,
    EmbeddingRequestError,
    ModelMismatchError,
    RateLimited,
    ServiceUnavailable,
)
from embedding_client.client import retry_after_seconds
from entrypoints.http.app import create_app
from tests.support import API_KEY, fake_settings, free_port, wait_ready

MINILM = KNOWN_MODELS["all-MiniLM-L6-v2"]
MPNET = KNOWN_MODELS["all-mpnet-base-v2"]
TEXTS = [f"Harbour jazz night #{i}" for i in range(250)]


def fake_local(spec: ModelSpec) -> FakeEmbedder:
    return FakeEmbedderLoader(spec).load()


def expected(texts: list[str], spec: ModelSpec = MINILM) -> np.ndarray:
    return FakeEmbedder(spec).embed(texts)


@contextmanager
def served_app(model: str = "all-MiniLM-L6-v2", **settings: object) -> Iterator[TestClient]:
    with TestClient(create_app(fake_settings(model_name=model, **settings))) as client:
        wait_ready(client)
        yield client


def recording(http: httpx.Client) -> list[tuple[str, int]]:
    """Record (path, number of texts) of every request the client sends."""
    seen: list[tuple[str, int]] = []

    def hook(request: httpx.Request) -> None:
        body = json.loads(request.content) if request.content else {}
        seen.append((request.url.path, len(body.get("texts", []))))

    http.event_hooks["request"] = [hook]
    return seen


def test_service_path_splits_batches_to_the_servers_limit() -> None:
    with served_app() as http:
        seen = recording(http)
        client = EmbeddingClient("http://testserver", API_KEY, model="all-MiniLM-L6-v2", http_client=http)
        vectors = client.embed(TEXTS)
        assert seen == [("/metadata", 0), ("/embed", 100), ("/embed", 100), ("/embed", 50)]
        np.testing.assert_array_equal(vectors, expected(TEXTS))
        assert vectors.dtype == np.float32 and client.last_source == "service"
        np.testing.assert_array_equal(client.embed_one(TEXTS[3]), expected(TEXTS[3:4])[0])
        assert client.embed([]).shape == (0, 384)


def test_requests_are_also_split_by_size() -> None:
    with served_app(max_input_length=20_000) as http:
        seen = recording(http)
        texts = ["é" * 9_000] * 10
        client = EmbeddingClient(
            "http://testserver", API_KEY, model="all-MiniLM-L6-v2", http_client=http, max_request_bytes=40_000
        )
        np.testing.assert_array_equal(client.embed(texts), expected(texts))
    assert [n for path, n in seen if path == "/embed"] == [2, 2, 2, 2, 2]


def test_model_is_learned_from_the_service_when_not_configured() -> None:
    with served_app("all-mpnet-base-v2") as http:
        client = EmbeddingClient("http://testserver", API_KEY, http_client=http)
        assert (client.model, client.dimension) == ("all-mpnet-base-v2", 768)
        np.testing.assert_array_equal(client.embed(TEXTS[:3]), expected(TEXTS[:3], MPNET))


def test_refuses_a_service_that_serves_another_model() -> None:
    with served_app("all-mpnet-base-v2") as http:
        client = EmbeddingClient("http://testserver", API_KEY, model="all-MiniLM-L6-v2", http_client=http)
        with pytest.raises(ModelMismatchError, match=r"serves all-mpnet-base-v2 .* refusing to mix"):
            client.embed(["x"])
        assert client.last_source is None


def test_a_service_serving_several_models_serves_the_clients_one_whichever_is_its_default() -> None:
    with served_app("all-mpnet-base-v2", models="all-mpnet-base-v2,all-MiniLM-L6-v2") as http:
        client = EmbeddingClient("http://testserver", API_KEY, model="all-MiniLM-L6-v2", http_client=http)
        np.testing.assert_array_equal(client.embed(TEXTS[:3]), expected(TEXTS[:3], MINILM))
        assert (client.last_source, client.dimension) == ("service", 384)
        default = EmbeddingClient("http://testserver", API_KEY, http_client=http)
        np.testing.assert_array_equal(default.embed(TEXTS[:2]), expected(TEXTS[:2], MPNET))


def test_without_a_url_it_embeds_in_process_with_the_same_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDDING_MODEL", "all-MiniLM-L6-v2")
    client = EmbeddingClient(local_loader=fake_local)
    np.testing.assert_array_equal(client.embed(TEXTS), expected(TEXTS))
    assert client.last_source == "local"


def test_a_models_document_prompt_is_applied_in_process_as_the_service_applies_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from adapters.model_lock import write_entry
    from domain.model import PinnedFile

    prompted = dataclasses.replace(
        MINILM,
        name="e5-like",
        hub_id="example/e5-like",
        prompts=(("document", "passage: "), ("query", "query: ")),
        files=(*MINILM.files, PinnedFile("config.json", "cd" * 32, 600), PinnedFile("tokenizer.json", "ef" * 32, 9)),
        required_files=(),
    )
    lock = tmp_path / "models.lock.json"
    write_entry(lock, prompted)
    monkeypatch.setenv("MODELS_LOCK", str(lock))
    with served_app("e5-like", models_lock=lock) as http:
        served = EmbeddingClient("http://testserver", API_KEY, model="e5-like", http_client=http).embed(TEXTS[:3])
    local = EmbeddingClient(model="e5-like", local_loader=fake_local).embed(TEXTS[:3])
    np.testing.assert_array_equal(local, served)
    np.testing.assert_array_equal(local, expected([f"passage: {t}" for t in TEXTS[:3]], prompted))


def test_without_a_url_or_model_it_says_what_to_set() -> None:
    with pytest.raises(ClientConfigurationError, match=r"pass model=\.\.\. or set EMBEDDING_MODEL"):
        EmbeddingClient(local_loader=fake_local).embed(["x"])
    with pytest.raises(ClientConfigurationError, match="fallback_to_local=False"):
        EmbeddingClient(fallback_to_local=False)
    with pytest.raises(ClientConfigurationError, match="unknown model 'gpt'"):
        EmbeddingClient(model="gpt")
    with pytest.raises(TypeError, match="use embed_one"):
        EmbeddingClient(model="all-MiniLM-L6-v2", local_loader=fake_local).embed("one text")


def test_unreachable_service_falls_back_to_local(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = EmbeddingClient(url, API_KEY, model="all-MiniLM-L6-v2", local_loader=fake_local, timeout=2)
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(client.embed(TEXTS[:5]), expected(TEXTS[:5]))
    assert client.last_source == "local"
    assert f"embedding service at {url} unavailable (ConnectError" in caplog.text
    strict = EmbeddingClient(url, API_KEY, fallback_to_local=False, model="all-MiniLM-L6-v2", timeout=2)
    with pytest.raises(ServiceUnavailable, match="unavailable: ConnectError"):
        strict.embed(["x"])


def test_503_is_retried_honoring_retry_after_then_falls_back() -> None:
    app = create_app(fake_settings(model_name="all-MiniLM-L6-v2"))
    app.state.container.loader.override(providers.Object(FakeEmbedderLoader(MINILM, fail=True)))
    sleeps: list[float] = []
    with TestClient(app) as http:
        client = EmbeddingClient(
            "http://testserver",
            API_KEY,
            model="all-MiniLM-L6-v2",
            http_client=http,
            local_loader=fake_local,
            max_retries=3,
            sleep=sleeps.append,
        )
        np.testing.assert_array_equal(client.embed(TEXTS[:2]), expected(TEXTS[:2]))
    assert sleeps == [5.0, 5.0, 5.0]  # the service's Retry-After for model_not_ready
    assert client.last_source == "local"


def test_500_falls_back_but_4xx_is_raised() -> None:
    app = create_app(fake_settings(model_name="all-MiniLM-L6-v2"))
    app.state.container.limits.override(providers.Object(None))
    with TestClient(app, raise_server_exceptions=False) as http:
        wait_ready(http)
        client = EmbeddingClient(
            "http://testserver", API_KEY, model="all-MiniLM-L6-v2", http_client=http, local_loader=fake_local
        )
        np.testing.assert_array_equal(client.embed(["x"]), expected(["x"]))
        assert client.last_source == "local"
    with served_app(max_input_length=10) as http:
        wrong_key = EmbeddingClient("http://testserver", "wrong", model="all-MiniLM-L6-v2", http_client=http)
        with pytest.raises(EmbeddingRequestError, match="401 unauthenticated") as info:
            wrong_key.embed(["x"])
        assert info.value.status == 401
        client = EmbeddingClient("http://testserver", API_KEY, model="all-MiniLM-L6-v2", http_client=http)
        with pytest.raises(EmbeddingRequestError, match="400 input_too_long"):
            client.embed(["far too long for this server"])


class ScriptedService:
    """A tiny HTTP fake of the service: answers from FakeEmbedder, with scripted 429s and outages."""

    def __init__(self, spec: ModelSpec = MINILM) -> None:
        self.spec = spec
        self.embedder = FakeEmbedder(spec)
        self.rate_limited = 0
        self.up = True
        self.retry_after = "2"
        self.embed_calls = 0
        self.broken_proxy = False
        self.dropped = 0  # embed requests whose connection is lost before an answer (a replica going away)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        if self.broken_proxy:
            return httpx.Response(200, text="<html>gateway</html>")
        if request.url.path == "/metadata":
            s = self.spec
            meta = {"model": s.name, "revision": s.revision, "weights_sha256": s.weights_sha256, "max_batch_size": 100}
            return httpx.Response(200, json=meta)
        if self.rate_limited:
            self.rate_limited -= 1
            error = {"error": {"type": "rate_limited", "message": "slow down"}}
            return httpx.Response(429, json=error, headers={"retry-after": self.retry_after})
        if self.dropped:
            self.dropped -= 1
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        self.embed_calls += 1
        texts = json.loads(request.content)["texts"]
        vectors = self.embedder.embed(texts).tolist()
        return httpx.Response(200, json={"embeddings": vectors, "model": self.spec.name, "processing_time_ms": 1.0})


def scripted_client(service: ScriptedService, **options: object) -> tuple[EmbeddingClient, list[float]]:
    sleeps: list[float] = []
    http = httpx.Client(transport=httpx.MockTransport(service))
    client = EmbeddingClient(
        "http://svc",
        model="all-MiniLM-L6-v2",
        http_client=http,
        local_loader=fake_local,
        sleep=sleeps.append,
        **options,  # type: ignore[arg-type]
    )
    return client, sleeps


def test_429_is_retried_honoring_retry_after() -> None:
    service = ScriptedService()
    service.rate_limited = 2
    client, sleeps = scripted_client(service)
    np.testing.assert_array_equal(client.embed(TEXTS[:3]), expected(TEXTS[:3]))
    assert (sleeps, client.last_source) == ([2.0, 2.0], "service")
    service.rate_limited = 10
    limited, sleeps = scripted_client(service, max_retries=3, max_retry_wait_s=1.5)
    with pytest.raises(RateLimited, match="after 3 retries: slow down"):
        limited.embed(["x"])
    assert sleeps == [1.5, 1.5, 1.5]


def test_a_connection_lost_under_a_request_is_retried_but_an_unreachable_service_is_not() -> None:
    service = ScriptedService()
    service.dropped = 2  # a replica behind the load balancer stopped under these requests
    client, sleeps = scripted_client(service, fallback_to_local=False)
    np.testing.assert_array_equal(client.embed(TEXTS[:3]), expected(TEXTS[:3]))
    assert (sleeps, client.last_source) == ([0.2, 0.4], "service")
    service.dropped = 10
    gone, _ = scripted_client(service, fallback_to_local=False, max_retries=2)
    with pytest.raises(ServiceUnavailable, match="RemoteProtocolError"):
        gone.embed(["x"])
    service.dropped, service.up = 0, False
    down, sleeps = scripted_client(service)  # unreachable: in-process at once, no waiting
    np.testing.assert_array_equal(down.embed(TEXTS[:2]), expected(TEXTS[:2]))
    assert (sleeps, down.last_source) == ([], "local")


def test_retry_after_accepts_seconds_dates_and_falls_back_to_backoff() -> None:
    def answer(value: str | None) -> httpx.Response:
        return httpx.Response(503, headers={"retry-after": value} if value else {})

    assert retry_after_seconds(answer("7"), 0) == 7.0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 28 <= retry_after_seconds(answer(later), 0) <= 30
    assert [retry_after_seconds(answer(None), a) for a in (0, 1, 2, 10)] == [1.0, 2.0, 4.0, 30.0]


def test_service_is_tried_again_after_an_outage() -> None:
    service = ScriptedService()
    client, _ = scripted_client(service, recheck_after_s=0.0)
    service.up = False
    client.embed(["a"])
    assert client.last_source == "local"
    service.up = True
    np.testing.assert_array_equal(client.embed(["b", "c"]), expected(["b", "c"]))
    assert (client.last_source, service.embed_calls) == ("service", 1)


def test_a_non_json_answer_counts_as_an_outage() -> None:
    service = ScriptedService()
    service.broken_proxy = True
    client, _ = scripted_client(service)
    np.testing.assert_array_equal(client.embed(["a"]), expected(["a"]))
    assert client.last_source == "local"


def test_a_redeployed_service_with_another_model_is_refused_mid_job() -> None:
    service = ScriptedService()
    client, _ = scripted_client(service)
    client.embed(["a"])
    service.spec, service.embedder = MPNET, FakeEmbedder(MPNET)
    with pytest.raises(ModelMismatchError, match="answered with model 'all-mpnet-base-v2'"):
        client.embed(["b"])


def test_progress_bar_on_long_jobs(capsys: pytest.CaptureFixture[str]) -> None:
    client, _ = scripted_client(ScriptedService())
    client.embed(TEXTS, progress=True)
    assert "250/250" in capsys.readouterr().err
    client.embed(TEXTS)  # not a terminal: no bar unless asked
    assert capsys.readouterr().err == ""
