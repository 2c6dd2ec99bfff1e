"""Domain services: model lifecycle, the backend agreement rule, length-sorted batching of one caller's texts, cache
keys and the fail-safe cache requests go through."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import TypeVar

import numpy as np

from domain.errors import BackendDisagrees, CacheUnavailable, ModelNotReady
from domain.model import CacheScope, CacheStats, ModelSpec, TextKeyRule, Vector, Vectors
from domain.ports import Embedder, EmbedderLoader, EmbeddingCache

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


def embed_by_length(embedder: Embedder, texts: Sequence[str], batch_size: int) -> Vectors:
    """Embed `texts` in batches of similar length (less padding), returning rows in input order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    out: Vectors | None = None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        vectors = embedder.embed([texts[i] for i in idx])
        if out is None:
            out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
        out[idx] = vectors
    if out is None:
        raise ValueError("nothing to embed")
    return out


def check_agreement(backend: str, candidate: Vectors, reference: Vectors, required: float) -> float:
    """The smallest cosine between a backend's vectors and the torch fp32 ones; raises below `required`."""
    if candidate.shape != reference.shape:
        raise BackendDisagrees(backend, float("-inf"), required)
    norms = np.linalg.norm(candidate, axis=1) * np.linalg.norm(reference, axis=1)
    cosines = (candidate * reference).sum(axis=1) / np.maximum(norms, 1e-12)
    lowest = float(cosines.min())
    if not np.isfinite(lowest) or lowest < required:
        raise BackendDisagrees(backend, lowest, required)
    return lowest


def text_key(rule: TextKeyRule, text: str) -> bytes:
    """The cache key of a text: sha256 of its key-normalized UTF-8 (lone surrogates kept), never the text itself."""
    return hashlib.sha256(rule.normalize(text).encode("utf-8", "surrogatepass")).digest()


def describe_failure(exc: BaseException) -> str:
    """One short line naming a storage failure: the driver's first line, never the statement or its parameters."""
    cause = getattr(exc, "orig", None) or exc
    first_line = (str(cause).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line}"[:200]


T = TypeVar("T")


class FailSafeCache:
    """The embedding cache as requests use it: a storage failure is logged and turns into a miss, never a failed
    request. After a failure the storage is left alone for `retry_after_s`; then one call probes it (preparing it
    again first: a restored database may be empty) while the others keep going without it."""

    def __init__(
        self,
        store: EmbeddingCache,
        shared_pool: bool = False,
        retry_after_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._shared_pool = shared_pool
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._prepare_lock = threading.Lock()
        self._prepared = False
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._skipped = 0

    @property
    def enabled(self) -> bool:
        return self._store.backend != "none"

    @property
    def backend(self) -> str:
        return self._store.backend

    @property
    def available(self) -> bool:
        with self._lock:
            return self._down_since is None

    def prepare(self) -> bool:
        """Create or migrate the storage now (start-up); False, logged, when it cannot be reached."""
        return self._run("prepare", lambda: True) is not None

    def lookup(self, scope: CacheScope, keys: Sequence[bytes]) -> dict[bytes, Vector]:
        found = self._run("lookup", lambda: self._store.get(scope, keys, shared_pool=self._shared_pool))
        return found or {}

    def save(self, scope: CacheScope, vectors: Mapping[bytes, Vector]) -> bool:
        def put() -> bool:
            self._store.put(scope, vectors)
            return True

        return self._run("store", put) is not None

    def stats(self, tenant: str) -> CacheStats:
        stats = self._run("stats", lambda: self._store.stats(tenant))
        if stats is None:
            raise CacheUnavailable()
        return stats

    def close(self) -> None:
        try:
            self._store.close()
        except Exception as exc:
            log.warning("closing the embedding cache failed (%s)", describe_failure(exc))

    def _run(self, what: str, operation: Callable[[], T]) -> T | None:
        with self._lock:
            now = self._clock()
            if self._down_since is not None:
                if now < self._retry_at:
                    self._skipped += 1
                    return None
                self._retry_at = now + self._retry_after_s  # this call probes; concurrent ones skip meanwhile
        try:
            with self._prepare_lock:
                if not self._prepared:
                    self._store.prepare()
                    self._prepared = True
            result = operation()
        except Exception as exc:
            self._failed(what, exc)
            return None
        self._recovered()
        return result

    def _failed(self, what: str, exc: Exception) -> None:
        with self._lock:
            first = self._down_since is None
            now = self._clock()
            if first:
                self._down_since, self._skipped = now, 0
            self._retry_at = now + self._retry_after_s
            self._prepared = False  # the database may come back empty: the next probe migrates first
        level = logging.WARNING if first else logging.DEBUG
        log.log(
            level,
            "embedding cache (%s) %s failed (%s); embedding without it, next try in %g s",
            self._store.backend,
            what,
            describe_failure(exc),
            self._retry_after_s,
        )

    def _recovered(self) -> None:
        with self._lock:
            if self._down_since is None:
                return
            down_for, skipped = self._clock() - self._down_since, self._skipped
            self._down_since = None
        log.info(
            "embedding cache (%s) is back after %.1f s; %d calls went without it meanwhile",
            self._store.backend,
            down_for,
            skipped,
        )
