"""One caller's bad text never fails another caller's request: the real MiniLM behind a real server, one tenant
sending unpaired surrogates while another embeds, concurrently."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import httpx
import numpy as np
import pytest

from adapters.dynamic_batcher import BatchPolicy, DynamicBatchingScheduler
from adapters.model_provisioning import VerifiedModelProvisioner
from adapters.sentence_transformer_loader import SentenceTransformerLoader
from domain.errors import BackendFailure
from domain.model import KNOWN_MODELS
from entrypoints.http.app import create_app
from tests.support import MODEL_ROOT, real_model_settings, uvicorn_app

pytestmark = pytest.mark.integration

ALICE, MALLORY = "alice-key-0123456789", "mallory-key-0123456789"


def test_unpaired_surrogates_are_refused_alone_while_other_tenants_get_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = real_model_settings("all-MiniLM-L6-v2", tenant_api_keys={"alice": ALICE, "mallory": MALLORY})
    statuses: dict[str, list[int]] = {"alice": [], "mallory": []}
    bodies: list[dict[str, object]] = []
    stop = threading.Event()

    def alice(base: str, worker: int) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ALICE}"}, timeout=60) as client:
            n = 0
            while not stop.is_set():
                response = client.post("/v1/embed", json={"text": f"alice's note {worker}-{n}"})
                statuses["alice"].append(response.status_code)
                n += 1

    def mallory(base: str) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {MALLORY}"}, timeout=60) as client:
            while not stop.is_set():
                for path, body in (
                    ("/v1/embed", b'{"text": "a \\ud800"}'),
                    ("/embed", b'{"texts": ["fine", "b \\udfff c"]}'),
                    ("/embed/batch", b'{"inputs": [{"id": "\\ud83d", "text": "x"}]}'),
                ):
                    response = client.post(path, content=body, headers={"content-type": "application/json"})
                    statuses["mallory"].append(response.status_code)
                    bodies.append(response.json())
                time.sleep(0.05)

    with caplog.at_level(logging.INFO), uvicorn_app(create_app(settings)) as (base, _):
        workers = [threading.Thread(target=alice, args=(base, w)) for w in range(4)]
        workers.append(threading.Thread(target=mallory, args=(base,)))
        for worker in workers:
            worker.start()
        time.sleep(4)
        stop.set()
        for worker in workers:
            worker.join(60)

    assert len(statuses["alice"]) >= 20 and set(statuses["alice"]) == {200}
    assert len(statuses["mallory"]) >= 9 and set(statuses["mallory"]) == {422}
    assert all(body["error"]["type"] == "invalid_request" for body in bodies)  # type: ignore[index]
    assert any("surrogate" in body["error"]["message"] for body in bodies)  # type: ignore[index]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_a_text_the_real_tokenizer_cannot_take_fails_only_its_own_request_in_a_shared_call() -> None:
    """Below the HTTP layer's checks (a caller of the scheduler directly): the real MiniLM on ONNX Runtime, a busy
    worker so the next requests share one model call, one of them holding an unpaired surrogate."""
    spec = KNOWN_MODELS["all-MiniLM-L6-v2"]
    embedder = SentenceTransformerLoader(
        spec, VerifiedModelProvisioner(MODEL_ROOT, sources=[]), device="cpu", backend="onnx"
    ).load()
    clean = [[f"note {i}", f"another note {i}"] for i in range(8)]

    async def scenario() -> list[object]:
        scheduler = DynamicBatchingScheduler(timeout_s=30, max_queued_texts=1000, policy=BatchPolicy(max_texts=64))
        await scheduler.run(embedder, ["warm-up: measures the throughput admission uses"] * 8)
        busy = asyncio.create_task(scheduler.run(embedder, ["a long text to keep the worker busy " * 40] * 32))
        await asyncio.sleep(0.05)
        results = await asyncio.gather(
            *(scheduler.run(embedder, texts) for texts in clean),
            scheduler.run(embedder, ["fine", "a \ud800 b"]),
            return_exceptions=True,
        )
        await busy
        scheduler.shutdown()
        return results

    results = asyncio.run(scenario())
    for texts, result in zip(clean, results[:-1], strict=True):
        assert isinstance(result, np.ndarray), result
        np.testing.assert_allclose(result, embedder.embed(texts), atol=1e-5)
    assert isinstance(results[-1], BackendFailure)
