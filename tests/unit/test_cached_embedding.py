"""The cache as the embed use cases use it, on the fake embedder and the in-memory cache: cache on == cache off,
only misses computed, tenants apart, failures never fail a request."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.fake_embedder import FakeEmbedder, FakeEmbedderLoader
from adapters.memory_cache import InMemoryEmbeddingCache, NoEmbeddingCache
from adapters.resilience import FailSafeCache, OutageLog
from domain.errors import CacheUnavailable
from domain.model import KNOWN_MODELS, SHARED_POOL, CacheScope, CacheStats, Caller, Limits, TextItem, Vector
from domain.ports import EmbeddingCache
from domain.services import ModelHost, text_key
from domain.use_cases import EmbedBatch, EmbedOne, GetCacheStats, GetHealth
from tests.support import domain_test_scheduler, pool_of

SPEC = KNOWN_MODELS["all-MiniLM-L6-v2"]
ACME, GLOBEX = Caller(tenant="acme"), Caller(tenant="globex")


class Service:
    """The embed use cases over one fake model, one scheduler and the given cache store."""

    def __init__(self, store: EmbeddingCache, shared_pool: bool = False, retry_after_s: float = 5.0) -> None:
        self.host = ModelHost(FakeEmbedderLoader(SPEC))
        scheduler = domain_test_scheduler(max_texts=64)
        self.cache = FailSafeCache(store, shared_pool=shared_pool, retry_after_s=retry_after_s)
        limits = Limits(max_input_length=1000, max_batch_size=100)
        self.one = EmbedOne(pool_of(self.host, scheduler), limits, self.cache)
        self.batch = EmbedBatch(pool_of(self.host, scheduler), limits, self.cache)

    async def start(self) -> Service:
        await self.host.start()
        return self

    @property
    def model_calls(self) -> list[int]:
        embedder = self.host.embedder()
        assert isinstance(embedder, FakeEmbedder)
        return list(embedder.calls)

    async def embed(self, texts: Sequence[str], caller: Caller = ACME) -> tuple[np.ndarray, list[bool]]:
        result = await self.batch.execute([TextItem(id=None, text=t) for t in texts], caller=caller)
        return np.stack([item.embedding for item in result.items]), [item.cached for item in result.items]


def scope_of(service: Service, tenant: str) -> CacheScope:
    info = service.host.embedder().info
    return CacheScope(tenant, info.cache_model, info.cache_variant)


@given(st.lists(st.lists(st.sampled_from(["a", "b", "Ada", "ada", " a ", "", "ΟΔΟΣ", "x y"]), min_size=1), min_size=1))
def test_cache_on_equals_cache_off(batches: list[list[str]]) -> None:
    async def scenario() -> None:
        on = await Service(InMemoryEmbeddingCache(max_entries=3)).start()  # small: evictions happen too
        off = await Service(NoEmbeddingCache()).start()
        for texts in batches:
            cached_vectors, _ = await on.embed(texts)
            plain_vectors, flags = await off.embed(texts)
            np.testing.assert_array_equal(cached_vectors, plain_vectors)
            assert flags == [False] * len(texts)

    asyncio.run(scenario())


def test_only_misses_are_computed_each_distinct_text_once() -> None:
    async def scenario() -> None:
        service = await Service(InMemoryEmbeddingCache()).start()
        _, flags = await service.embed(["jazz", "market", "jazz"])
        assert flags == [False, False, False]
        assert service.model_calls == [2]  # "jazz" once
        _, flags = await service.embed(["market", "cinema", "jazz", "cinema"])
        assert flags == [True, False, True, False]
        assert service.model_calls == [2, 1]  # only "cinema"
        _, flags = await service.embed(["cinema"])
        assert (flags, service.model_calls) == ([True], [2, 1])
        stats = service.cache.stats("acme")
        assert stats == CacheStats(hits=3, misses=3, entries=3)

    asyncio.run(scenario())


def test_single_texts_and_batches_share_entries() -> None:
    async def scenario() -> None:
        service = await Service(InMemoryEmbeddingCache()).start()
        first = await service.one.execute("Ada Lovelace", caller=ACME)
        assert first.cache_used and not first.items[0].cached
        vectors, flags = await service.embed(["Ada Lovelace"])
        assert flags == [True]
        np.testing.assert_array_equal(vectors[0], first.items[0].embedding)

    asyncio.run(scenario())


def test_tenants_never_see_each_others_entries() -> None:
    async def scenario() -> None:
        service = await Service(InMemoryEmbeddingCache()).start()
        await service.embed(["private note"], caller=ACME)
        _, flags = await service.embed(["private note"], caller=GLOBEX)
        assert flags == [False]
        assert service.model_calls == [1, 1]
        assert service.cache.stats("globex") == CacheStats(hits=0, misses=1, entries=1)

    asyncio.run(scenario())


def test_shared_pool_serves_every_tenant_only_when_enabled() -> None:
    async def scenario() -> None:
        store = InMemoryEmbeddingCache()
        plain = await Service(store).start()
        pooled = await Service(store, shared_pool=True).start()
        shared = scope_of(plain, SHARED_POOL)
        public = plain.host.embedder().embed(["public holiday"])
        store.put(shared, {text_key(plain.host.embedder().info.text_key, "public holiday"): public[0]})
        _, flags = await plain.embed(["public holiday"], caller=GLOBEX)
        assert flags == [False]
        _, flags = await pooled.embed(["public holiday"], caller=ACME)
        assert flags == [True]
        assert store.hit_count(shared, text_key(plain.host.embedder().info.text_key, "public holiday")) == 1

    asyncio.run(scenario())


def test_malformed_cached_vectors_are_recomputed(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        store = InMemoryEmbeddingCache()
        service = await Service(store).start()
        rule = service.host.embedder().info.text_key
        store.put(scope_of(service, "acme"), {text_key(rule, "short"): np.ones(3, dtype=np.float32)})
        vectors, flags = await service.embed(["short"])
        assert flags == [False]
        np.testing.assert_array_equal(vectors[0], service.host.embedder().embed(["short"])[0])

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    assert "ignored 1 malformed cache entries" in caplog.text


class SwitchableStore:
    """An in-memory cache whose storage can be made to fail, like a database going down and coming back."""

    def __init__(self) -> None:
        self.inner = InMemoryEmbeddingCache()
        self.down = False
        self.calls = 0
        self.prepares = 0
        self.backend = "memory"

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise ConnectionError("connection refused\nsecond line with details")

    def prepare(self) -> None:
        self._check()
        self.prepares += 1

    def get(
        self, scope: CacheScope, keys: Sequence[bytes], *, shared_pool: bool = False, count: bool = True
    ) -> dict[bytes, Vector]:
        self._check()
        return self.inner.get(scope, keys, shared_pool=shared_pool, count=count)

    def put(self, scope: CacheScope, vectors: Mapping[bytes, Vector]) -> None:
        self._check()
        self.inner.put(scope, vectors)

    def stats(self, tenant: str) -> CacheStats:
        self._check()
        return self.inner.stats(tenant)

    def close(self) -> None:
        self.inner.close()


def test_a_failing_cache_never_fails_a_request_and_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        store = SwitchableStore()
        service = await Service(store, retry_after_s=0.2).start()
        await service.embed(["kept"])
        store.down = True
        vectors, flags = await service.embed(["kept", "new"])  # lookup fails: both computed
        assert flags == [False, False]
        np.testing.assert_array_equal(vectors, service.host.embedder().embed(["kept", "new"]))
        calls_when_down = store.calls
        for _ in range(5):
            await service.embed(["kept"])
        assert store.calls == calls_when_down  # within retry_after_s the store is not touched
        with pytest.raises(CacheUnavailable):
            await GetCacheStats(service.cache).execute(ACME)
        store.down = False
        await asyncio.sleep(0.25)
        _, flags = await service.embed(["kept"])
        assert flags == [True]
        assert service.cache.available
        assert store.prepares == 2  # at the first use, and again after the outage

    with caplog.at_level(logging.INFO, logger="adapters.resilience"):
        asyncio.run(scenario())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "embedding cache (memory) lookup failed (ConnectionError: connection refused); embedding without it, "
        "next try in 0.2 s"
    ]
    assert any("is back after" in r.getMessage() for r in caplog.records)


def test_an_unreachable_cache_at_start_is_prepared_later() -> None:
    async def scenario() -> None:
        store = SwitchableStore()
        store.down = True
        service = await Service(store, retry_after_s=0.05).start()
        assert service.cache.prepare() is False
        store.down = False
        await asyncio.sleep(0.06)
        await service.embed(["later"])
        _, flags = await service.embed(["later"])
        assert flags == [True]

    asyncio.run(scenario())


def test_the_probe_brings_the_cache_back_without_any_request() -> None:
    async def scenario() -> None:
        store = SwitchableStore()
        service = await Service(store, retry_after_s=0.05).start()
        await service.embed(["a"])
        store.down = True
        await service.embed(["b"])
        assert not service.cache.available
        store.down = False
        for _ in range(100):
            if service.cache.available:
                break
            await asyncio.sleep(0.02)
        assert service.cache.available
        assert store.prepares == 2

    asyncio.run(scenario())


class SlowToPrepareStore(SwitchableStore):
    """Preparing blocks until the test lets it finish: a migration taking its time."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.preparing = 0  # preparations begun

    def prepare(self) -> None:
        self.preparing += 1
        assert self.release.wait(10)
        super().prepare()


def test_requests_do_not_wait_for_the_start_up_preparation_and_health_does() -> None:
    async def scenario() -> None:
        store = SlowToPrepareStore()
        service = await Service(store).start()
        health = GetHealth(pool_of(service.host), service.cache)
        service.cache.start()  # as the server's lifespan does
        started = time.monotonic()
        _, flags = await service.embed(["while preparing"])  # even before the start-up thread got going
        assert flags == [False] and time.monotonic() - started < 1  # went without the cache, did not wait
        await asyncio.sleep(0.05)
        assert store.preparing == 1  # no request prepared (migrated) itself
        assert (health.execute().status, health.execute().ready) == ("loading", False)
        store.release.set()
        for _ in range(100):
            if health.execute().ready:
                break
            await asyncio.sleep(0.02)
        assert (health.execute().status, health.execute().ready) == ("ok", True)
        await service.embed(["after"])
        _, flags = await service.embed(["after"])
        assert flags == [True]
        service.cache.close()

    asyncio.run(scenario())


class StallingStore(SwitchableStore):
    """The next lookup stalls until released and then fails: a call caught in an outage that ends after the
    recovery."""

    def __init__(self) -> None:
        super().__init__()
        self.stall_next = False
        self.stalled = threading.Event()
        self.release = threading.Event()

    def get(
        self, scope: CacheScope, keys: Sequence[bytes], *, shared_pool: bool = False, count: bool = True
    ) -> dict[bytes, Vector]:
        if self.stall_next:
            self.stall_next = False
            self.stalled.set()
            self.release.wait(10)
            raise ConnectionError("connection reset")
        return super().get(scope, keys, shared_pool=shared_pool, count=count)


def test_a_failure_of_a_call_begun_before_the_recovery_starts_no_new_outage() -> None:
    async def scenario() -> None:
        store = StallingStore()
        service = await Service(store, retry_after_s=0.05).start()
        await service.embed(["warm"])
        store.stall_next = True
        stuck = asyncio.create_task(service.embed(["caught in the outage"]))
        try:
            await asyncio.to_thread(store.stalled.wait, 5)
            store.down = True
            await service.embed(["fails"])  # the outage begins
            store.down = False
            for _ in range(100):  # the probe brings it back
                if service.cache.available:
                    break
                await asyncio.sleep(0.02)
            assert service.cache.available
        finally:
            store.release.set()
        assert (await stuck)[1] == [False]  # that request still got its vector
        assert service.cache.available  # its late failure was stale
        _, flags = await service.embed(["warm"])
        assert flags == [True]
        service.cache.close()

    asyncio.run(scenario())


def test_closing_stops_the_probe() -> None:
    async def scenario() -> None:
        store = SwitchableStore()
        service = await Service(store, retry_after_s=0.05).start()
        await service.embed(["warm"])
        store.down = True
        await service.embed(["fails"])
        service.cache.close()
        calls = store.calls
        await asyncio.sleep(0.2)
        assert store.calls == calls  # no probe ran after close

    asyncio.run(scenario())


class SlowLookupStore(SwitchableStore):
    """Every lookup takes 1 s: with a burst, most of them only wait for a worker thread."""

    def get(
        self, scope: CacheScope, keys: Sequence[bytes], *, shared_pool: bool = False, count: bool = True
    ) -> dict[bytes, Vector]:
        time.sleep(1.0)
        return super().get(scope, keys, shared_pool=shared_pool, count=count)


def test_a_burst_does_not_wait_for_cache_calls_queued_behind_each_other(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        store = SlowLookupStore()
        service = await Service(store).start()
        service.cache = FailSafeCache(store, wait_s=0.2)
        service.batch = EmbedBatch(pool_of(service.host, domain_test_scheduler(64)), Limits(1000, 100), service.cache)
        started = time.monotonic()
        results = await asyncio.gather(*(service.embed([f"burst {n}"]) for n in range(30)))
        assert time.monotonic() - started < 1.5  # not 30 lookups / a handful of threads x 1 s
        assert all(flags == [False] for _, flags in results)
        assert service.cache.available  # a busy process is no outage of the storage

    with caplog.at_level(logging.WARNING, logger="adapters.resilience"):
        asyncio.run(scenario())
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "lookup waited over 0.2 s for a worker thread" in warnings[0]


def test_no_cache_reports_nothing() -> None:
    async def scenario() -> None:
        service = await Service(NoEmbeddingCache()).start()
        result = await service.one.execute("x", caller=ACME)
        assert (result.cache_used, result.cache_hits) == (False, [])
        report = await GetCacheStats(service.cache).execute(ACME)
        assert (report.backend, report.stats) == ("none", CacheStats(0, 0, 0))

    asyncio.run(scenario())


def test_memory_cache_evicts_the_least_recently_used() -> None:
    cache = InMemoryEmbeddingCache(max_entries=2)
    scope = CacheScope("acme", "m@r", "fake-fp32/float32-l2")
    vector = np.ones(4, dtype=np.float32) / 2
    cache.put(scope, {b"a": vector, b"b": vector})
    assert set(cache.get(scope, [b"a"])) == {b"a"}  # a is now the most recent
    cache.put(scope, {b"c": vector})
    assert set(cache.get(scope, [b"a", b"b", b"c"])) == {b"a", b"c"}
    assert cache.stats("acme").entries == 2


def test_an_outage_log_ignores_failures_of_calls_begun_before_its_recovery(caplog: pytest.LogCaptureFixture) -> None:
    """A call that waited on an outage already logged (the account database's, the model's) and fails after the
    recovery starts no new outage: one warning and one recovery line per outage, not a flapping log."""
    outage = OutageLog("account database")
    with caplog.at_level(logging.DEBUG, logger="adapters.resilience"):
        begun_during_the_outage = time.monotonic()
        outage.failed("key lookup", ConnectionError("refused"))
        outage.failed("key lookup", ConnectionError("refused"))
        outage.answered()
        outage.failed("usage write", TimeoutError("stalled"), started=begun_during_the_outage)  # stale
        outage.answered()  # nothing to report
        outage.failed("key lookup", ConnectionError("refused again"), started=time.monotonic())  # a new outage
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == ["WARNING", "DEBUG", "INFO", "DEBUG", "WARNING"], lines
    assert lines[0][1] == "account database key lookup failed (ConnectionError: refused)"
    assert lines[2][1].startswith("account database answers again after 0.0 s (2 calls failed meanwhile)")
    assert lines[4][1] == "account database key lookup failed (ConnectionError: refused again)"
