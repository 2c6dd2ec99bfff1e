"""Domain properties of embedding, on the deterministic fake embedder."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.dynamic_batcher import DynamicBatchingScheduler
from adapters.fake_embedder import FakeEmbedder, FakeEmbedderLoader
from adapters.memory_cache import NoEmbeddingCache
from adapters.resilience import FailSafeCache
from domain.errors import (
    BatchTooLarge,
    InputTooLong,
    InvalidInput,
    ModelNotReady,
    Unauthenticated,
    UnknownModel,
    UnsupportedEncodingFormat,
)
from domain.model import KNOWN_MODELS, Caller, Limits, TextItem
from domain.services import ModelHost, ModelState
from domain.use_cases import AuthenticateCaller, EmbedBatch, EmbedOne, GetHealth
from tests.support import domain_test_scheduler, pool_of

SPEC = KNOWN_MODELS["all-mpnet-base-v2"]
texts_strategy = st.lists(st.text(max_size=60), min_size=1, max_size=40)


def scheduler(max_texts: int = 4) -> DynamicBatchingScheduler:
    built: DynamicBatchingScheduler = domain_test_scheduler(max_texts)
    return built


def build(limits: Limits | None = None, micro_batch_size: int = 4) -> tuple[EmbedOne, EmbedBatch, ModelHost]:
    host = ModelHost(FakeEmbedderLoader(SPEC))
    scheduler_ = scheduler(micro_batch_size)
    limits = limits or Limits(max_input_length=100, max_batch_size=100)
    no_cache = FailSafeCache(NoEmbeddingCache())
    return (
        EmbedOne(pool_of(host, scheduler_), limits, no_cache),
        EmbedBatch(pool_of(host, scheduler_), limits, no_cache),
        host,
    )


async def ready(host: ModelHost) -> None:
    await host.start()
    assert host.state is ModelState.READY


@given(texts_strategy)
def test_batch_vectors_are_unit_norm_in_order_and_complete(texts: list[str]) -> None:
    async def scenario() -> None:
        _, embed_batch, host = build()
        await ready(host)
        items = [TextItem(id=f"id-{i}", text=t) for i, t in enumerate(texts)]
        result = await embed_batch.execute(items)
        assert [i.id for i in result.items] == [f"id-{i}" for i in range(len(texts))]
        assert [i.index for i in result.items] == list(range(len(texts)))
        matrix = np.stack([i.embedding for i in result.items])
        np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-5)
        direct = host.embedder().embed(texts)
        np.testing.assert_array_equal(matrix, direct)

    asyncio.run(scenario())


@given(st.text(max_size=100), st.lists(st.text(max_size=100), max_size=10))
def test_embed_one_equals_first_of_batch(text: str, others: list[str]) -> None:
    async def scenario() -> None:
        embed_one, embed_batch, host = build(micro_batch_size=3)
        await ready(host)
        single = await embed_one.execute(text)
        batch = await embed_batch.execute([TextItem(id=None, text=t) for t in [text, *others]])
        np.testing.assert_array_equal(single.items[0].embedding, batch.items[0].embedding)
        assert single.model == batch.model == SPEC.name

    asyncio.run(scenario())


def test_texts_with_unpaired_surrogates_are_refused_before_the_model() -> None:
    async def scenario() -> None:
        embed_one, embed_batch, host = build()
        await ready(host)
        with pytest.raises(InvalidInput) as by_id:
            await embed_batch.execute([TextItem("ok", "fine 😀"), TextItem("rec-2", "a \ud800 b")])
        assert by_id.value.message == (
            "input with id 'rec-2' holds an unpaired surrogate (U+D800) at character 2, which no tokenizer can "
            "encode; send valid Unicode text."
        )
        with pytest.raises(InvalidInput, match=r"^input 0 holds an unpaired surrogate \(U\+DFFF\) at character 0"):
            await embed_one.execute("\udfff")
        embedder = host.embedder()
        assert isinstance(embedder, FakeEmbedder) and list(embedder.calls) == []

    asyncio.run(scenario())


def test_validation_errors_name_the_problem() -> None:
    async def scenario() -> None:
        embed_one, embed_batch, host = build(Limits(max_input_length=10, max_batch_size=3))
        await ready(host)
        with pytest.raises(InputTooLong) as too_long:
            await embed_batch.execute([TextItem("ok", "short"), TextItem("rec-7", "x" * 11)])
        assert too_long.value.details == {"id": "rec-7", "length": 11, "limit": 10}
        with pytest.raises(BatchTooLarge) as too_many:
            await embed_batch.execute([TextItem(str(i), "t") for i in range(4)])
        assert "at most 3" in too_many.value.message
        with pytest.raises(UnknownModel) as unknown:
            await embed_one.execute("hi", model="text-embedding-3-small")
        assert "all-mpnet-base-v2" in unknown.value.message
        with pytest.raises(UnsupportedEncodingFormat):
            await embed_one.execute("hi", encoding_format="base64")
        with pytest.raises(InvalidInput):
            await embed_batch.execute([])
        with pytest.raises(InvalidInput):
            await embed_batch.execute([TextItem("dup", "a"), TextItem("dup", "b")])
        for alias in SPEC.aliases:
            assert (await embed_one.execute("hi", model=alias)).model == SPEC.name

    asyncio.run(scenario())


def test_nothing_is_embedded_before_the_model_is_ready() -> None:
    async def scenario() -> None:
        host = ModelHost(FakeEmbedderLoader(SPEC, load_delay_s=0.3))
        no_cache = FailSafeCache(NoEmbeddingCache())
        embed_one = EmbedOne(pool_of(host, scheduler()), Limits(100, 100), no_cache)
        task = host.start()
        assert GetHealth(pool_of(host), no_cache).execute().ready is False
        with pytest.raises(ModelNotReady):
            await embed_one.execute("hi")
        await task
        assert GetHealth(pool_of(host), no_cache).execute().status == "ok"
        assert len((await embed_one.execute("hi")).items) == 1

    asyncio.run(scenario())


def test_failed_load_reports_error_health() -> None:
    async def scenario() -> None:
        host = ModelHost(FakeEmbedderLoader(SPEC, fail=True))
        await host.start()
        report = GetHealth(pool_of(host), FailSafeCache(NoEmbeddingCache())).execute()
        assert (report.status, report.ready) == ("error", False)

    asyncio.run(scenario())


def test_authentication_accepts_only_configured_keys_and_names_their_tenant() -> None:
    async def scenario() -> None:
        auth = AuthenticateCaller({"alpha": "alpha-key", "beta": "beta-key", "unused": ""})
        assert await auth.execute("alpha-key") == Caller(tenant="alpha")
        assert await auth.execute("beta-key") == Caller(tenant="beta")
        for wrong in (None, "", "alpha", "alpha-key ", "gamma-key"):
            with pytest.raises(Unauthenticated):
                await auth.execute(wrong)
        assert AuthenticateCaller({}).enabled is False
        assert await AuthenticateCaller({}).execute(None) == Caller(tenant="anonymous")

    asyncio.run(scenario())
