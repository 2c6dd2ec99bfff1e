"""Metrics where the work happens: the scheduler's queue depth, model calls and overload refusals, the fail-safe
cache's hits and misses, each in a registry of its own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from adapters.dynamic_batcher import BatchPolicy, DynamicBatchingScheduler
from adapters.fake_embedder import FakeEmbedder
from adapters.memory_cache import InMemoryEmbeddingCache
from adapters.metrics import PrometheusMetrics
from adapters.resilience import FailSafeCache
from domain.errors import Overloaded
from domain.model import KNOWN_MODELS, CacheScope, Vector, Vectors

SPEC = KNOWN_MODELS["all-MiniLM-L6-v2"]


class GatedEmbedder(FakeEmbedder):
    """The fake, holding every model call until `release` is set."""

    def __init__(self) -> None:
        super().__init__(SPEC)
        self.entered = threading.Event()
        self.release = threading.Event()

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.entered.set()
        assert self.release.wait(10)
        return super().embed(texts)


def sample(metrics: PrometheusMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_the_queue_gauge_follows_admitted_texts_and_overload_is_counted() -> None:
    async def scenario() -> None:
        metrics = PrometheusMetrics()
        embedder = GatedEmbedder()
        scheduler = DynamicBatchingScheduler(
            timeout_s=10,
            max_queued_texts=6,
            policy=BatchPolicy(max_texts=8, max_wait_s=0),
            metrics=metrics,
            model=SPEC.name,
        )
        first = asyncio.create_task(scheduler.run(embedder, ["a", "b", "c"]))
        while not embedder.entered.is_set():
            await asyncio.sleep(0.005)
        assert sample(metrics, "embedding_queue_texts", model=SPEC.name) == 3  # running
        second = asyncio.create_task(scheduler.run(embedder, ["d e", "f"]))
        await asyncio.sleep(0.05)
        assert sample(metrics, "embedding_queue_texts", model=SPEC.name) == 5  # and waiting
        with pytest.raises(Overloaded):
            await scheduler.run(embedder, ["g", "h"])
        assert sample(metrics, "embedding_overloaded_total") == 1
        embedder.release.set()
        await asyncio.gather(first, second)
        await asyncio.sleep(0.01)  # the last call's report reaches the event loop
        scheduler.shutdown()
        assert sample(metrics, "embedding_queue_texts", model=SPEC.name) == 0
        assert sample(metrics, "embedding_texts_embedded_total", model=SPEC.name) == 5
        assert sample(metrics, "embedding_tokens_embedded_total", model=SPEC.name) == 3 * 3 + 4 + 3
        assert sample(metrics, "embedding_model_batch_size_count") == 2
        assert sample(metrics, "embedding_model_batch_size_bucket", le="2.0") == 1
        assert sample(metrics, "embedding_model_batch_size_bucket", le="4.0") == 2

    asyncio.run(scenario())


class BrokenStore(InMemoryEmbeddingCache):
    def get(
        self, scope: CacheScope, keys: Sequence[bytes], *, shared_pool: bool = False, count: bool = True
    ) -> dict[bytes, Vector]:
        raise ConnectionError("database is down")


SCOPE = CacheScope("acme", "model@rev", "fp32")


def test_cache_lookups_count_each_key_as_a_hit_or_a_miss() -> None:
    async def scenario() -> None:
        metrics = PrometheusMetrics()
        cache = FailSafeCache(InMemoryEmbeddingCache(), metrics=metrics)
        await cache.save_in_time(SCOPE, {b"k1": np.ones(3, dtype=np.float32)})
        assert sample(metrics, "embedding_cache_hits_total") == sample(metrics, "embedding_cache_misses_total") == 0
        assert set(await cache.lookup_in_time(SCOPE, [b"k1", b"k2", b"k3"])) == {b"k1"}
        assert sample(metrics, "embedding_cache_hits_total") == 1
        assert sample(metrics, "embedding_cache_misses_total") == 2

        down = PrometheusMetrics()
        broken = FailSafeCache(BrokenStore(), metrics=down)
        assert await broken.lookup_in_time(SCOPE, [b"k1", b"k2"]) == {}  # a failure is a miss of every key
        broken.close()
        assert sample(down, "embedding_cache_hits_total") == 0
        assert sample(down, "embedding_cache_misses_total") == 2

    asyncio.run(scenario())


def test_each_instance_counts_in_a_registry_of_its_own() -> None:
    one, other = PrometheusMetrics(), PrometheusMetrics()
    one.rate_limited("minute")
    one.model_loaded(SPEC.name, 1.5)
    assert sample(one, "embedding_rate_limited_total", window="minute") == 1
    assert sample(other, "embedding_rate_limited_total", window="minute") == 0
    assert b'embedding_model_load_seconds{model="all-MiniLM-L6-v2"} 1.5' in one.exposition()


def test_with_metrics_off_prometheus_client_is_never_imported() -> None:
    """The peoplepad container keeps no metrics: serving a request there loads nothing of them."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from entrypoints.http.app import create_app\n"
        "from tests.support import AUTH, fake_settings, wait_ready\n"
        "with TestClient(create_app(fake_settings())) as client:\n"
        "    wait_ready(client)\n"
        "    assert client.post('/embed', json={'input': 'x'}, headers=AUTH).status_code == 200\n"
        "print(sorted(m for m in sys.modules if m.startswith('prometheus')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
