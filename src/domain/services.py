"""Domain services: model lifecycle and bounded, deadline-aware inference scheduling."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum

import numpy as np

from domain.errors import BackendFailure, DomainError, ModelNotReady, Overloaded, Timeout
from domain.model import ModelSpec, Vectors
from domain.ports import Embedder, EmbedderLoader

log = logging.getLogger(__name__)


class ModelState(StrEnum):
    LOADING = "loading"
    READY = "ok"
    FAILED = "error"


class ModelHost:
    """Owns the served model: loads it off the event loop and tells whether it is ready."""

    def __init__(self, loader: EmbedderLoader) -> None:
        self._loader = loader
        self._embedder: Embedder | None = None
        self._state = ModelState.LOADING
        self._task: asyncio.Task[None] | None = None

    @property
    def spec(self) -> ModelSpec:
        return self._loader.spec

    @property
    def state(self) -> ModelState:
        return self._state

    def start(self) -> asyncio.Task[None]:
        """Begin loading in a worker thread; the returned task ends when the model is ready or failed."""
        if self._task is None:
            self._task = asyncio.create_task(self._load())
        return self._task

    async def _load(self) -> None:
        started = time.monotonic()
        log.info("loading model %s", self.spec.name)
        try:
            self._embedder = await asyncio.to_thread(self._loader.load)
        except Exception:
            self._state = ModelState.FAILED
            log.exception("model %s failed to load", self.spec.name)
            return
        self._state = ModelState.READY
        log.info("model %s ready in %.1f s", self.spec.name, time.monotonic() - started)

    def embedder(self) -> Embedder:
        if self._embedder is None:
            raise ModelNotReady(self.spec.name)
        return self._embedder


def embed_by_length(
    embedder: Embedder, texts: Sequence[str], batch_size: int, before_batch: Callable[[], None] | None = None
) -> Vectors:
    """Embed `texts` in batches of similar length (less padding), returning rows in input order.

    `before_batch` runs before each batch and may raise to stop the work.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    out: Vectors | None = None
    for start in range(0, len(order), batch_size):
        if before_batch is not None:
            before_batch()
        idx = order[start : start + batch_size]
        vectors = embedder.embed([texts[i] for i in idx])
        if out is None:
            out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
        out[idx] = vectors
    if out is None:
        raise ValueError("nothing to embed")
    return out


class _Abandoned(Exception):
    """Raised inside a worker thread when its caller gave up; remaining micro-batches are skipped."""


class InferenceScheduler:
    """Runs embedding work in at most `max_workers` threads, with a bounded wait queue and a per-request deadline.

    Work is split into length-sorted micro-batches; once a request's deadline passes or its caller goes away,
    the micro-batches not yet started are dropped, so abandoned work frees the model within one micro-batch.
    """

    def __init__(self, max_workers: int, max_queue: int, timeout_s: float, micro_batch_size: int) -> None:
        self._max_workers = max_workers
        self._max_queue = max_queue
        self._timeout_s = timeout_s
        self._micro_batch_size = micro_batch_size
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="inference")
        self._slots: asyncio.Semaphore | None = None
        self._waiting = 0

    async def run(self, embedder: Embedder, texts: Sequence[str]) -> Vectors:
        deadline = time.monotonic() + self._timeout_s
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_workers)
        slots = self._slots
        if slots.locked():
            if self._waiting >= self._max_queue:
                raise Overloaded(retry_after_s=max(1, round(self._timeout_s / 2)))
            self._waiting += 1
            try:
                await asyncio.wait_for(slots.acquire(), timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise Timeout(self._timeout_s) from None
            finally:
                self._waiting -= 1
        else:
            await slots.acquire()
        cancelled = threading.Event()
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, self._compute, embedder, list(texts), cancelled, deadline
        )
        future.add_done_callback(lambda _: slots.release())
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            cancelled.set()
            raise Timeout(self._timeout_s) from None
        except asyncio.CancelledError:
            cancelled.set()
            raise
        except _Abandoned:
            raise Timeout(self._timeout_s) from None
        except DomainError:
            raise
        except Exception:
            log.exception("embedding backend failed on a request of %d texts", len(texts))
            raise BackendFailure() from None

    def _compute(self, embedder: Embedder, texts: list[str], cancelled: threading.Event, deadline: float) -> Vectors:
        def still_wanted() -> None:
            if cancelled.is_set() or time.monotonic() > deadline:
                raise _Abandoned()

        return embed_by_length(embedder, texts, self._micro_batch_size, still_wanted)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
