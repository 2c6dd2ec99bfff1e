"""Bounded inference: deadlines, abandoned work, overload and backend failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from adapters.fake_embedder import FakeEmbedder
from domain.errors import BackendFailure, Overloaded, Timeout
from domain.model import KNOWN_MODELS, ModelInfo, Vectors
from domain.services import InferenceScheduler

SPEC = KNOWN_MODELS["all-MiniLM-L6-v2"]


class BrokenEmbedder:
    @property
    def info(self) -> ModelInfo:
        return ModelInfo(SPEC, "broken", "cpu")

    def embed(self, texts: Sequence[str]) -> Vectors:
        raise RuntimeError("CUDA error: secret internals")


def test_timeout_abandons_remaining_micro_batches() -> None:
    async def scenario() -> None:
        embedder = FakeEmbedder(SPEC, delay_per_text_s=0.05)
        scheduler = InferenceScheduler(max_workers=1, max_queue=4, timeout_s=0.3, micro_batch_size=2)
        started = time.monotonic()
        with pytest.raises(Timeout):
            await scheduler.run(embedder, [f"t{i}" for i in range(40)])
        assert time.monotonic() - started < 0.5
        await asyncio.sleep(0.3)
        # 40 texts would be 20 micro-batches (2 s); the work stopped within one micro-batch of the deadline.
        assert sum(embedder.calls) <= 10
        calls_after = len(embedder.calls)
        await asyncio.sleep(0.3)
        assert len(embedder.calls) == calls_after
        # the worker is free again: a small request succeeds
        assert (await scheduler.run(embedder, ["again"])).shape == (1, SPEC.dimension)

    asyncio.run(scenario())


def test_work_waiting_past_its_deadline_never_runs() -> None:
    async def scenario() -> None:
        embedder = FakeEmbedder(SPEC, delay_per_text_s=0.1)
        scheduler = InferenceScheduler(max_workers=1, max_queue=4, timeout_s=0.25, micro_batch_size=1)
        results = await asyncio.gather(
            scheduler.run(embedder, ["a", "b", "c", "d", "e"]),
            scheduler.run(embedder, ["late"]),
            return_exceptions=True,
        )
        assert isinstance(results[0], Timeout)
        assert isinstance(results[1], Timeout)
        await asyncio.sleep(0.3)
        # the first request ran 3 micro-batches (the third began before its deadline), the queued one none
        assert list(embedder.calls) == [1, 1, 1]

    asyncio.run(scenario())


def test_queue_is_bounded() -> None:
    async def scenario() -> None:
        embedder = FakeEmbedder(SPEC, delay_per_text_s=0.2)
        scheduler = InferenceScheduler(max_workers=1, max_queue=2, timeout_s=5, micro_batch_size=8)
        results = await asyncio.gather(*(scheduler.run(embedder, [f"t{i}"]) for i in range(5)), return_exceptions=True)
        overloaded = [r for r in results if isinstance(r, Overloaded)]
        assert len(overloaded) == 2
        assert all(r.retry_after_s >= 1 for r in overloaded)
        assert sum(1 for r in results if not isinstance(r, BaseException)) == 3

    asyncio.run(scenario())


def test_concurrency_never_exceeds_max_workers() -> None:
    class Counting(FakeEmbedder):
        active = 0
        peak = 0

        def embed(self, texts: Sequence[str]) -> Vectors:
            Counting.active += 1
            Counting.peak = max(Counting.peak, Counting.active)
            try:
                time.sleep(0.02)
                return super().embed(texts)
            finally:
                Counting.active -= 1

    async def scenario() -> None:
        scheduler = InferenceScheduler(max_workers=2, max_queue=50, timeout_s=5, micro_batch_size=1)
        embedder = Counting(SPEC)
        await asyncio.gather(*(scheduler.run(embedder, ["x", "y"]) for _ in range(10)))
        assert Counting.peak == 2

    asyncio.run(scenario())


def test_backend_exceptions_become_backend_failure_without_details() -> None:
    async def scenario() -> None:
        scheduler = InferenceScheduler(max_workers=1, max_queue=2, timeout_s=5, micro_batch_size=8)
        with pytest.raises(BackendFailure) as failure:
            await scheduler.run(BrokenEmbedder(), ["x"])
        assert "secret" not in failure.value.message

    asyncio.run(scenario())


def test_results_keep_input_order_despite_length_sorting() -> None:
    async def scenario() -> None:
        embedder = FakeEmbedder(SPEC)
        scheduler = InferenceScheduler(max_workers=1, max_queue=2, timeout_s=5, micro_batch_size=2)
        texts = ["a", "ccc" * 10, "bb", "dddd" * 5, ""]
        out = await scheduler.run(embedder, texts)
        assert (out == embedder.embed(texts)).all()

    asyncio.run(scenario())
