"""Ports: the interfaces the domain needs from the outside world, as structural Protocols."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from domain.model import CacheScope, CacheStats, ModelInfo, ModelSpec, Vector, Vectors


class Embedder(Protocol):
    """A loaded model turning texts into L2-normalized float32 vectors, one row per text, in input order."""

    @property
    def info(self) -> ModelInfo: ...

    def embed(self, texts: Sequence[str]) -> Vectors: ...

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """How many tokens each text takes in a model call (special tokens included, after truncation)."""
        ...


class InferenceScheduler(Protocol):
    """Runs embedding work off the event loop within a per-request deadline and a bounded queue.

    Raises Overloaded when the work would not finish in time or the queue is full, Timeout when the deadline passes,
    BackendFailure when the model fails on the request's own texts. The deadline counts from `arrived` (a
    time.monotonic() reading taken when the request arrived) when given, else from the call.
    """

    async def run(self, embedder: Embedder, texts: Sequence[str], arrived: float | None = None) -> Vectors: ...

    def shutdown(self) -> None: ...


class EmbedderLoader(Protocol):
    """Provisions (if needed), loads and pre-warms the configured model; slow, called once at start-up."""

    @property
    def spec(self) -> ModelSpec: ...

    def load(self) -> Embedder: ...


class ModelProvisioner(Protocol):
    """Makes verified weights of a model available on local disk and returns their folder."""

    def ensure(self, spec: ModelSpec) -> Path: ...


class EmbeddingCache(Protocol):
    """Vectors already computed, by scope (tenant, model revision, variant) and text key (sha256 of normalized text).

    Stored as float32 bytes. Any method may raise when the storage fails; the domain then computes without it.
    """

    @property
    def backend(self) -> str:
        """none, memory, sqlite or postgres."""
        ...

    def prepare(self) -> None:
        """Create or migrate the storage; idempotent, safe to run from several processes at once."""
        ...

    def get(
        self, scope: CacheScope, keys: Sequence[bytes], *, shared_pool: bool = False, count: bool = True
    ) -> dict[bytes, Vector]:
        """The stored vectors of `keys` (missing keys absent): the tenant's own entries, else the shared pool's when
        `shared_pool`. With `count`, the served entries' hit counts and the tenant's hit/miss counters grow by one per
        key, in the same transaction."""
        ...

    def put(self, scope: CacheScope, vectors: Mapping[bytes, Vector]) -> None:
        """Store all of `vectors` or none of them; keys already stored keep their first vector."""
        ...

    def stats(self, tenant: str) -> CacheStats:
        """The tenant's hit and miss counters and how many entries it owns."""
        ...

    def close(self) -> None: ...
