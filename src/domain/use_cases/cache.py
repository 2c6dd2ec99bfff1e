"""Cache use cases: a caller's cache counters, and filling the cache ahead of traffic."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice

from domain.errors import InvalidInput
from domain.model import SHARED_POOL, TENANT_NAME, CacheScope, CacheStats, Caller, InputType, Limits, Vectors
from domain.ports import EmbedderLoader, EmbeddingCache, RequestCache
from domain.services import embed_by_length, text_key


@dataclass(frozen=True)
class CacheReport:
    tenant: str
    backend: str
    stats: CacheStats


class GetCacheStats:
    """The caller's cache counters: hits, misses and entries it owns."""

    def __init__(self, cache: RequestCache) -> None:
        self._cache = cache

    async def execute(self, caller: Caller) -> CacheReport:
        stats = await asyncio.to_thread(self._cache.stats, caller.tenant)
        return CacheReport(tenant=caller.tenant, backend=self._cache.backend, stats=stats)


@dataclass(frozen=True)
class SeedReport:
    texts: int
    distinct: int
    already_cached: int
    embedded: int
    too_long: int


class SeedCache:
    """Fill the cache ahead of traffic for one tenant or the shared pool: texts already stored are skipped, the rest
    embedded in chunks, each chunk stored (all or nothing) before the next, so an interrupted run keeps its work and
    a rerun continues. Storage errors are raised, not swallowed: this is an operator's command."""

    def __init__(
        self, loader: EmbedderLoader, cache: EmbeddingCache, limits: Limits, chunk_size: int = 256, batch_size: int = 32
    ) -> None:
        self._loader = loader
        self._cache = cache
        self._limits = limits
        self._chunk_size = chunk_size
        self._batch_size = batch_size

    def execute(self, texts: Iterable[str], tenant: str, progress: Callable[[int], None] | None = None) -> SeedReport:
        if tenant != SHARED_POOL and not TENANT_NAME.fullmatch(tenant):
            raise InvalidInput(f"tenant {tenant!r} is not a tenant name (lowercase letters, digits, '_', '.', '-').")
        if self._cache.backend in ("none", "memory"):
            raise InvalidInput(
                f"CACHE_BACKEND={self._cache.backend} keeps nothing outside the server; seed sqlite or postgres."
            )
        self._cache.prepare()
        embedder = self._loader.load()
        info = embedder.info
        scope = CacheScope(tenant, info.cache_model, info.cache_variant)
        prompt = info.spec.prompt_for(InputType.DOCUMENT)  # seeded texts are documents, keyed as requests key them
        seen: set[bytes] = set()
        total = cached = embedded = too_long = 0
        lines = iter(texts)
        while chunk := list(islice(lines, self._chunk_size)):
            total += len(chunk)
            fresh: dict[bytes, str] = {}
            for text in chunk:
                if len(text) > self._limits.max_input_length:
                    too_long += 1
                    continue
                text = prompt + text
                key = text_key(info.text_key, text)
                if key not in seen:
                    seen.add(key)
                    fresh[key] = text
            stored = self._cache.get(scope, list(fresh), count=False)
            missing = [key for key in fresh if key not in stored]
            cached += len(fresh) - len(missing)
            if missing:
                vectors: Vectors = embed_by_length(embedder, [fresh[key] for key in missing], self._batch_size)
                self._cache.put(scope, dict(zip(missing, vectors, strict=True)))
                embedded += len(missing)
            if progress:
                progress(len(chunk))
        return SeedReport(total, len(seen), cached, embedded, too_long)
