"""Models by pin and several models in one process, on the fake backend: MODELS picks and lists them, a request's
`model` chooses one, input_type applies a model's query/document prompt (and keys the cache by it), and a lock
entry's Matryoshka sizes are what `dimensions` may ask for."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dependency_injector import providers
from fastapi.testclient import TestClient
from pydantic import ValidationError

from adapters.dynamic_batcher import BatchPolicy, DynamicBatchingScheduler
from adapters.fake_embedder import FakeEmbedder, FakeEmbedderLoader
from adapters.model_lock import LockFileError, entry_of, read_lock, write_entry
from domain.model import KNOWN_MODELS, ModelSpec, PinnedFile
from entrypoints.http.app import create_app
from tests.support import AUTH, fake_settings, wait_ready

MPNET, MINILM = KNOWN_MODELS["all-mpnet-base-v2"], KNOWN_MODELS["all-MiniLM-L6-v2"]
BOTH = "all-mpnet-base-v2,all-MiniLM-L6-v2"
PROMPTED = ModelSpec(
    name="tiny-e5",
    hub_id="example/tiny-e5",
    revision="0123456789abcdef0123456789abcdef01234567",
    files=(
        PinnedFile("config.json", "cd" * 32, 600),
        PinnedFile("model.safetensors", "ab" * 32, 1234),
        PinnedFile("tokenizer.json", "ef" * 32, 9000),
    ),
    dimension=32,
    max_seq_length=64,
    matryoshka_dimensions=(16, 8),
    prompts=(("query", "query: "),),
)


def lock_with(tmp_path: Path, *specs: ModelSpec) -> Path:
    lock = tmp_path / "models.lock.json"
    for spec in specs:
        write_entry(lock, spec)
    return lock


@pytest.fixture
def two_models() -> Iterator[TestClient]:
    with TestClient(create_app(fake_settings(models=BOTH))) as client:
        wait_ready(client)
        yield client


def vector(response: Any) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["embedding"], dtype=np.float32)


def test_each_request_is_embedded_by_the_model_it_names_and_the_first_is_the_default(two_models: TestClient) -> None:
    default = vector(two_models.post("/v1/embed", json={"text": "Ada Lovelace"}, headers=AUTH))
    mini = vector(two_models.post("/v1/embed", json={"text": "Ada Lovelace", "model": MINILM.name}, headers=AUTH))
    by_hub_id = vector(
        two_models.post("/v1/embed", json={"text": "Ada Lovelace", "model": MINILM.hub_id}, headers=AUTH)
    )
    assert default.shape == (768,) and mini.shape == (384,)
    np.testing.assert_array_equal(mini, by_hub_id)
    np.testing.assert_array_equal(mini, FakeEmbedder(MINILM).embed(["Ada Lovelace"])[0])
    batch = two_models.post("/embed", json={"texts": ["a", "b"], "model": MINILM.name}, headers=AUTH)
    assert (batch.status_code, batch.json()["model"], len(batch.json()["embeddings"][0])) == (200, MINILM.name, 384)
    openai = two_models.post("/v1/embeddings", json={"input": "a", "model": MINILM.hub_id}, headers=AUTH).json()
    assert (openai["model"], len(openai["data"][0]["embedding"])) == (MINILM.hub_id, 384)


def test_a_model_not_served_is_400_naming_the_served_ones_and_404_on_openais_route(two_models: TestClient) -> None:
    refused = two_models.post("/v1/embed/batch", json={"texts": ["a"], "model": "bge-small"}, headers=AUTH)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (error["type"], error["served_models"]) == ("unknown_model", [MPNET.name, MINILM.name])
    assert f"serves '{MPNET.name}', '{MINILM.name}'" in error["message"]
    openai = two_models.post("/v1/embeddings", json={"input": "a", "model": "bge-small"}, headers=AUTH)
    assert (openai.status_code, openai.json()["error"]["code"]) == (404, "model_not_found")
    missing = two_models.get("/v1/models/bge-small", headers=AUTH)
    assert missing.status_code == 404
    long_name = "m" * 100_000  # echoed bounded, not whole
    for path, body in (("/v1/embed", {"text": "a"}), ("/v1/embeddings", {"input": "a"})):
        answer = two_models.post(path, json={**body, "model": long_name}, headers=AUTH)
        assert answer.status_code in (400, 404) and len(answer.content) < 2000


def test_metadata_models_and_health_list_every_served_model(two_models: TestClient) -> None:
    listed = two_models.get("/v1/models", headers=AUTH).json()["data"]
    assert [model["id"] for model in listed] == [MPNET.name, MINILM.name]
    assert two_models.get(f"/v1/models/{MINILM.hub_id}", headers=AUTH).json()["id"] == MINILM.name
    meta = two_models.get("/metadata", headers=AUTH).json()
    assert meta["model"] == MPNET.name  # single-model clients read the default at the top level
    assert [(m["model"], m["dimension"], m["weights_sha256"]) for m in meta["models"]] == [
        (MPNET.name, 768, MPNET.weights_sha256),
        (MINILM.name, 384, MINILM.weights_sha256),
    ]
    health = two_models.get("/health").json()
    assert health["models"] == {MPNET.name: "ok", MINILM.name: "ok"}


def test_health_is_ready_only_once_every_model_is() -> None:
    loaded = threading.Event()  # the second model loads once the test has seen it loading

    class HeldLoader(FakeEmbedderLoader):
        def load(self) -> FakeEmbedder:
            assert loaded.wait(60)
            return super().load()

    app = create_app(fake_settings(models=BOTH))
    app.state.container.loader_for.override(providers.Factory(HeldLoader))  # the second
    app.state.container.loader.override(providers.Object(FakeEmbedderLoader(MPNET)))  # the default: at once
    with TestClient(app) as client, contextlib.ExitStack() as on_failure:
        on_failure.callback(loaded.set)  # a failing assertion must not leave the loader waiting
        deadline = time.monotonic() + 1.0
        seen: set[tuple[str, ...]] = set()
        while time.monotonic() < deadline:
            response = client.get("/health")
            seen.add((str(response.status_code), *response.json()["models"].values()))
            time.sleep(0.05)
        assert ("503", "ok", "loading") in seen  # the default is ready, the second is not: not ready
        assert not any(status == "200" for status, *_ in seen)
        mini = client.post("/v1/embed", json={"text": "x", "model": MINILM.name}, headers=AUTH)
        assert (mini.status_code, mini.json()["error"]["type"]) == (503, "model_not_ready")
        assert client.post("/v1/embed", json={"text": "x"}, headers=AUTH).status_code == 200  # the default serves
        meta = client.get("/metadata", headers=AUTH).json()  # the loading one described by its pin meanwhile
        loading = meta["models"][1]
        assert (meta["model"], meta["backend"], meta["models"][0]["state"]) == (MPNET.name, "fake", "ok")
        assert (loading["model"], loading["dimension"], loading["state"], loading["backend"]) == (
            MINILM.name,
            384,
            "loading",
            None,
        )
        loaded.set()
        body = wait_ready(client)
        assert body["models"] == {MPNET.name: "ok", MINILM.name: "ok"}
        assert client.get("/metadata", headers=AUTH).json()["models"][1]["backend"] == "fake"


def test_model_name_alone_keeps_meaning_one_model() -> None:
    settings = fake_settings(model_name=MINILM.hub_id)
    assert settings.served_models() == [MINILM.name]
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        assert [m["model"] for m in client.get("/metadata", headers=AUTH).json()["models"]] == [MINILM.name]
        assert client.post("/v1/embed", json={"text": "x", "model": MPNET.name}, headers=AUTH).status_code == 400


def test_models_must_be_known_and_distinct() -> None:
    with pytest.raises(ValidationError, match="unknown model 'nope'"):
        fake_settings(models="all-MiniLM-L6-v2,nope")
    with pytest.raises(ValidationError, match="names one model twice"):
        fake_settings(models=f"{MINILM.name},{MINILM.hub_id}")


@pytest.fixture
def prompted(tmp_path: Path) -> Iterator[TestClient]:
    lock = lock_with(tmp_path, PROMPTED)
    settings = fake_settings(models=f"{PROMPTED.name},{MINILM.name}", models_lock=lock, cache_backend="memory")
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def test_input_type_query_prefixes_the_models_query_prompt_on_every_route(prompted: TestClient) -> None:
    text = "jazz night at the harbour"
    with_prompt = FakeEmbedder(PROMPTED).embed(["query: " + text])[0]
    without = FakeEmbedder(PROMPTED).embed([text])[0]
    one = vector(prompted.post("/v1/embed", json={"text": text, "input_type": "query"}, headers=AUTH))
    np.testing.assert_array_equal(one, with_prompt)
    batch = prompted.post("/v1/embed/batch", json={"texts": [text], "input_type": "query"}, headers=AUTH).json()
    np.testing.assert_array_equal(np.asarray(batch["embeddings"][0], dtype=np.float32), with_prompt)
    openai = prompted.post("/v1/embeddings", json={"input": [text], "input_type": "query"}, headers=AUTH).json()
    np.testing.assert_array_equal(np.asarray(openai["data"][0]["embedding"], dtype=np.float32), with_prompt)
    # the peoplepad and events dialects take it too (documents by default, as they always were)
    for body in ({"input": text}, {"texts": [text]}, {"inputs": [{"id": "1", "text": text}]}):
        path = "/embed/batch" if "inputs" in body else "/embed"
        answer = prompted.post(path, json={**body, "input_type": "query"}, headers=AUTH).json()
        row = answer["embeddings"][0] if "texts" in body else answer["data"][0]["embedding"]
        np.testing.assert_array_equal(np.asarray(row, dtype=np.float32), with_prompt)
        bad = prompted.post(path, json={**body, "input_type": "QUERY"}, headers=AUTH)
        assert bad.status_code == 422
    # document is the default, and this model's document prompt is empty
    document = vector(prompted.post("/v1/embed", json={"text": text}, headers=AUTH))
    np.testing.assert_array_equal(document, without)
    assert prompted.post("/v1/embed", json={"text": text, "input_type": "passage"}, headers=AUTH).status_code == 422


def test_the_cache_key_holds_the_prompt_applied(prompted: TestClient) -> None:
    def cached(model: str, input_type: str) -> bool:
        body = {"text": "farmers market", "model": model, "input_type": input_type}
        response = prompted.post("/v1/embed", json=body, headers=AUTH)
        assert response.status_code == 200
        flag: bool = response.json()["cached"]
        return flag

    assert [cached(PROMPTED.name, kind) for kind in ("document", "query", "query", "document")] == [
        False,
        False,  # another prompt, another entry: the query vector is not the document's
        True,
        True,
    ]
    # a model without prompts ignores input_type: the text is the same model input either way
    assert [cached(MINILM.name, kind) for kind in ("document", "query")] == [False, True]


def test_input_type_is_ignored_by_a_model_without_prompts(two_models: TestClient) -> None:
    query = vector(two_models.post("/v1/embed", json={"text": "x y", "input_type": "query"}, headers=AUTH))
    document = vector(two_models.post("/v1/embed", json={"text": "x y", "input_type": "document"}, headers=AUTH))
    np.testing.assert_array_equal(query, document)


def test_a_lock_entrys_matryoshka_sizes_are_what_dimensions_may_ask_for(prompted: TestClient) -> None:
    def embeddings(**extra: Any) -> Any:
        return prompted.post("/v1/embeddings", json={"input": "a text", **extra}, headers=AUTH)

    full = np.asarray(embeddings().json()["data"][0]["embedding"])
    short = np.asarray(embeddings(dimensions=8).json()["data"][0]["embedding"])
    assert short.shape == (8,)
    np.testing.assert_allclose(short, full[:8] / np.linalg.norm(full[:8]), rtol=1e-5, atol=1e-7)
    refused = embeddings(dimensions=12)
    assert (refused.status_code, refused.json()["error"]["param"]) == (400, "dimensions")
    assert "16, 8" in refused.json()["error"]["message"]
    other = embeddings(dimensions=8, model=MINILM.name)  # the lock's sizes are that model's only
    assert other.status_code == 400


def test_a_lock_file_round_trips_and_refuses_what_is_not_a_pin(tmp_path: Path) -> None:
    lock = lock_with(tmp_path, PROMPTED)
    assert read_lock(lock) == (PROMPTED,)
    document = json.loads(lock.read_text())

    def refused(change: dict[str, Any], match: str) -> None:
        entry = {**document["models"][0], **change}
        lock.write_text(json.dumps({"version": 1, "models": [entry]}))
        with pytest.raises(LockFileError, match=match):
            read_lock(lock)

    refused({"revision": "main"}, "a pin is a full 40-character lowercase hex commit sha")
    refused({"revision": "A" * 40}, "lowercase hex")
    refused({"hub_id": None}, "hub_id must be a non-empty string")
    for field, value in [("dimension", 0), ("dimension", -4), ("dimension", 32.9), ("dimension", "abc")]:
        refused({field: value}, f"{field} must be a whole number of at least 1")
    refused({"max_seq_length": 0}, "max_seq_length must be a whole number of at least 1")
    refused({"prompts": {"query": None}}, "each prompt must be a string")
    refused({"prompts": {"query": ["a"]}}, "each prompt must be a string")
    refused({"prompts": "query: "}, "prompts must be an object")
    refused({"pooling": "bogus pooling!"}, "pooling must name")
    refused({"trust_remote_code": "false"}, "trust_remote_code must be true or false")
    refused({"matryoshka_dimensions": [16.5]}, "Matryoshka sizes must be whole numbers")
    refused({"files": {}}, "no pinned files")
    unweighted = {path: pin for path, pin in document["models"][0]["files"].items() if path != "model.safetensors"}
    refused({"files": unweighted}, "no weights file is pinned")
    untokenized = {path: pin for path, pin in document["models"][0]["files"].items() if path != "tokenizer.json"}
    refused({"files": untokenized}, "pins no tokenizer.json")
    refused({"files": {"../escape.bin": {"sha256": "ab" * 32, "size": 1}}}, "safe relative path")
    refused({"files": {"model.safetensors": {"sha256": "not-a-sha", "size": 1}}}, "sha256")
    refused({"name": MINILM.name}, "names two models")
    refused({"prompts": {"passage": "p: "}}, "prompts are for")
    refused({"matryoshka_dimensions": [64]}, "between 1 and its dimension")
    lock.write_text("{not json")
    with pytest.raises(LockFileError, match="models lock file"):
        read_lock(lock)
    with pytest.raises(ValidationError, match="models lock file"):
        fake_settings(models_lock=lock)
    with pytest.raises(LockFileError, match="is not a file"):
        read_lock(tmp_path)
    with pytest.raises(ValidationError, match=r"in the models lock file .*absent.json, which does not exist"):
        fake_settings(model_name="tiny-e5", models_lock=tmp_path / "absent.json")


def test_a_model_running_remote_code_is_served_only_with_model_trust_remote_code(tmp_path: Path) -> None:
    remote = dataclasses.replace(PROMPTED, name="nomic-like", hub_id="example/nomic-like", trust_remote_code=True)
    lock = lock_with(tmp_path, remote)
    with pytest.raises(ValidationError, match="MODEL_TRUST_REMOTE_CODE=true"):
        fake_settings(model_name="nomic-like", models_lock=lock)
    settings = fake_settings(model_name="nomic-like", models_lock=lock, model_trust_remote_code=True)
    assert settings.served_models() == ["nomic-like"]
    assert entry_of(remote)["trust_remote_code"] is True


def test_the_models_batchers_share_the_cores() -> None:
    """Two models' batchers given one core run one model call at a time between them."""
    running, most = 0, 0
    guard = threading.Lock()

    class Counting(FakeEmbedder):
        def embed(self, texts: Any) -> Any:
            nonlocal running, most
            with guard:
                running += 1
                most = max(most, running)
            time.sleep(0.05)
            with guard:
                running -= 1
            return super().embed(texts)

    async def scenario() -> None:
        cores = threading.Semaphore(1)
        batchers = [
            DynamicBatchingScheduler(5, 100, BatchPolicy(max_texts=1, max_wait_s=0), max_workers=2, cores=cores)
            for _ in range(2)
        ]
        models = [Counting(MPNET), Counting(MINILM)]
        try:
            await asyncio.gather(*(b.run(m, ["a", "b", "c"]) for b, m in zip(batchers, models, strict=True)))
        finally:
            for batcher in batchers:
                batcher.shutdown()

    asyncio.run(scenario())
    assert most == 1


class CountingLoader(FakeEmbedderLoader):
    """Fake models whose calls (each taking a while) are counted across every model of the process."""

    running = most = 0
    guard = threading.Lock()

    def load(self) -> FakeEmbedder:
        loader = type(self)

        class Counting(FakeEmbedder):
            def embed(self, texts: Any) -> Any:
                with loader.guard:
                    loader.running += 1
                    loader.most = max(loader.most, loader.running)
                time.sleep(0.03)
                with loader.guard:
                    loader.running -= 1
                return super().embed(texts)

        return Counting(self.spec)


def test_the_served_models_share_max_workers_cores_and_every_batcher_stops_with_the_server() -> None:
    app = create_app(fake_settings(models=BOTH, max_workers=1, batch_wait_ms=0, micro_batch_size=1))
    app.state.container.loader_for.override(providers.Factory(CountingLoader))
    app.state.container.loader.override(providers.Object(CountingLoader(MPNET)))
    with TestClient(app) as client:
        wait_ready(client)

        def send(model: str) -> int:
            body = {"texts": [f"text {i}" for i in range(4)], "model": model}
            return client.post("/v1/embed/batch", json=body, headers=AUTH).status_code

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(send, [MPNET.name, MINILM.name] * 2)) == [200] * 4
        batchers = [
            t for t in threading.enumerate() if t.name.startswith(("inference-all-mpnet", "inference-all-Mini"))
        ]
        assert {t.name.rsplit("-", 1)[0] for t in batchers} == {f"inference-{MPNET.name}", f"inference-{MINILM.name}"}
    assert CountingLoader.most == 1  # MAX_WORKERS=1: one model call at a time across both models
    assert not any(thread.is_alive() for thread in batchers)  # each model's batcher stopped


def test_usage_is_recorded_per_model(tmp_path: Path) -> None:
    from tests.contract.test_accounts_api import bearer, hosted, signup

    with hosted(tmp_path, models=BOTH) as client:
        key = signup(client)
        for model in (MPNET.name, MINILM.name, MINILM.name):
            assert client.post("/v1/embed", json={"text": "x", "model": model}, headers=bearer(key)).status_code == 200
    with hosted(tmp_path, models=BOTH) as client:
        rows = client.get("/v1/usage?days=1", headers=bearer(key)).json()["usage"]
    assert sorted((row["model"], row["requests"]) for row in rows) == [(MINILM.name, 2), (MPNET.name, 1)]
