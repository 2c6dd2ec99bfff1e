"""The real weights through HTTP: vectors equal direct sentence-transformers encode of the same weights."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sentence_transformers import SentenceTransformer

from embedding_client import EmbeddingClient
from entrypoints.http.app import create_app
from tests.support import API_KEY, AUTH, MODEL_ROOT, model_dir, real_model_settings, wait_ready

pytestmark = pytest.mark.integration

TEXTS = [
    "Ada Lovelace, analyst and metaphysician, London",
    "Met Grace at the compilers meetup; follow up about COBOL docs",
    "dentist appointment",
    "",
    "Émile Zola — écrivain, Paris 🇫🇷",
    "word " * 600,  # beyond max_seq_length: truncated by the model, not rejected
]


def served(model_name: str) -> TestClient:
    return TestClient(create_app(real_model_settings(model_name)))


def serving(model_name: str) -> Iterator[TestClient]:
    model_dir(model_name)
    with served(model_name) as client:
        wait_ready(client)
        yield client


def direct(model_name: str) -> SentenceTransformer:
    return SentenceTransformer(str(model_dir(model_name)), device="cpu")


@pytest.fixture(scope="module")
def mpnet() -> Iterator[TestClient]:
    yield from serving("all-mpnet-base-v2")


@pytest.fixture(scope="module")
def direct_mpnet() -> SentenceTransformer:
    return direct("all-mpnet-base-v2")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_mpnet_batch_over_http_matches_direct_encode(mpnet: TestClient, direct_mpnet: SentenceTransformer) -> None:
    inputs = [{"id": str(uuid.uuid4()), "text": t} for t in TEXTS]
    response = mpnet.post(
        "/embed/batch", json={"inputs": inputs, "model": "all-mpnet-base-v2", "encoding_format": "float"}, headers=AUTH
    )
    assert response.status_code == 200
    data = response.json()["data"]
    assert [d["id"] for d in data] == [i["id"] for i in inputs]
    served_vectors = np.array([d["embedding"] for d in data], dtype=np.float32)
    direct = direct_mpnet.encode(TEXTS, normalize_embeddings=True)
    assert served_vectors.shape == (len(TEXTS), 768)
    assert cosines(served_vectors, direct).min() >= 0.99999
    np.testing.assert_allclose(np.linalg.norm(served_vectors, axis=1), 1.0, atol=1e-5)


def test_mpnet_single_over_http_matches_direct_encode(mpnet: TestClient, direct_mpnet: SentenceTransformer) -> None:
    response = mpnet.post(
        "/embed", json={"input": TEXTS[0], "model": "sentence-transformers/all-mpnet-base-v2"}, headers=AUTH
    )
    vector = np.array([response.json().get("data", [{}])[0].get("embedding")], dtype=np.float32)
    direct = direct_mpnet.encode([TEXTS[0]], normalize_embeddings=True)
    assert cosines(vector, direct)[0] >= 0.99999


def test_peoplepad_sized_batch_finishes_well_inside_its_30s_timeout(mpnet: TestClient) -> None:
    inputs = [
        {
            "id": str(uuid.uuid4()),
            "text": f"Contact {i}: Jane Doe, ACME Corp, jane{i}@example.com, met at conference {i % 7}",
        }
        for i in range(100)
    ]
    started = time.monotonic()
    response = mpnet.post("/embed/batch", json={"inputs": inputs}, headers=AUTH)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert len(response.json()["data"]) == 100
    assert elapsed < 30, f"100 records took {elapsed:.1f} s"


def test_mpnet_metadata_reports_the_loaded_model(mpnet: TestClient, direct_mpnet: SentenceTransformer) -> None:
    import sentence_transformers

    body = mpnet.get("/metadata", headers=AUTH).json()
    assert body["dimension"] == direct_mpnet.get_embedding_dimension() == 768
    assert body["max_seq_length"] == direct_mpnet.max_seq_length == 384
    assert body["library_version"] == sentence_transformers.__version__
    assert body["weights_sha256"] == "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
    assert mpnet.get("/health").json() == {
        "status": "ok",
        "ready": True,
        "model": "all-mpnet-base-v2",
        "model_loaded": True,
        "model_name": "all-mpnet-base-v2",
        "models": {"all-mpnet-base-v2": "ok"},
    }


@pytest.fixture(scope="module")
def minilm() -> Iterator[TestClient]:
    yield from serving("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def direct_minilm() -> SentenceTransformer:
    return direct("all-MiniLM-L6-v2")


def test_minilm_container_choice_serves_384_dimensions(minilm: TestClient, direct_minilm: SentenceTransformer) -> None:
    response = minilm.post("/embed", json={"input": TEXTS[1], "model": "all-MiniLM-L6-v2"}, headers=AUTH)
    assert response.json()["model"] == "all-MiniLM-L6-v2"
    vector = np.array([response.json()["data"][0]["embedding"]], dtype=np.float32)
    assert vector.shape == (1, 384)
    assert cosines(vector, direct_minilm.encode([TEXTS[1]], normalize_embeddings=True))[0] >= 0.99999


def test_events_dialect_with_real_minilm(minilm: TestClient, direct_minilm: SentenceTransformer) -> None:
    texts = [f"Event {i}: {TEXTS[i % len(TEXTS)][:200]}" for i in range(100)]
    response = minilm.post("/embed", json={"texts": texts}, headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert (body["model"], len(body["embeddings"])) == ("all-MiniLM-L6-v2", 100)
    assert 0 < body["processing_time_ms"] < 60_000
    vectors = np.array(body["embeddings"], dtype=np.float32)
    assert vectors.shape == (100, 384)
    assert cosines(vectors, direct_minilm.encode(texts, normalize_embeddings=True)).min() >= 0.99999
    assert minilm.get("/health").json() == {
        "status": "ok",
        "ready": True,
        "model": "all-MiniLM-L6-v2",
        "model_loaded": True,
        "model_name": "all-MiniLM-L6-v2",
        "models": {"all-MiniLM-L6-v2": "ok"},
    }


def test_client_service_and_local_fallback_give_the_same_minilm_vectors(
    minilm: TestClient, direct_minilm: SentenceTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [f"{t[:300]} #{i}" for i, t in enumerate(TEXTS * 40)]  # 240 texts: three requests of <= 100
    remote = EmbeddingClient("http://testserver", API_KEY, model="all-MiniLM-L6-v2", http_client=minilm)
    via_service = remote.embed(texts)
    assert remote.last_source == "service"
    monkeypatch.setenv("MODEL_PATH", str(MODEL_ROOT))
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    monkeypatch.setenv("DEVICE", "cpu")
    local = EmbeddingClient(service_url="", model="all-MiniLM-L6-v2")
    in_process = local.embed(texts)
    assert local.last_source == "local"
    assert via_service.shape == in_process.shape == (240, 384)
    np.testing.assert_allclose(via_service, in_process, atol=1e-5)
    assert cosines(via_service, in_process).min() >= 0.99999
    assert cosines(in_process, direct_minilm.encode(texts, normalize_embeddings=True)).min() >= 0.99999
