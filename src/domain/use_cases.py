"""Use cases: what callers of the service can do, each a class with `execute()`."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

from domain.errors import (
    BatchTooLarge,
    InputTooLong,
    InvalidInput,
    Unauthenticated,
    UnknownModel,
    UnsupportedEncodingFormat,
)
from domain.model import (
    SHARED_POOL,
    TENANT_NAME,
    CacheScope,
    CacheStats,
    Caller,
    EmbeddedItem,
    Limits,
    ModelInfo,
    ModelSpec,
    TextItem,
    Vector,
    Vectors,
)
from domain.ports import Embedder, EmbedderLoader, EmbeddingCache, InferenceScheduler
from domain.services import FailSafeCache, ModelHost, ModelState, embed_by_length, text_key

log = logging.getLogger(__name__)

SUPPORTED_ENCODING_FORMATS = ("float",)
ANONYMOUS = Caller(tenant="anonymous")


@dataclass(frozen=True)
class EmbeddingResult:
    model: str
    items: list[EmbeddedItem]
    dimensions: int
    cache_used: bool = False  # False: no cache configured, so `cached` says nothing

    @property
    def cache_hits(self) -> list[int]:
        return [item.index for item in self.items if item.cached]


class _EmbedTexts:
    def __init__(self, host: ModelHost, scheduler: InferenceScheduler, limits: Limits, cache: FailSafeCache) -> None:
        self._host = host
        self._scheduler = scheduler
        self._limits = limits
        self._cache = cache

    def _validate(self, items: Sequence[TextItem], model: str | None, encoding_format: str) -> ModelSpec:
        spec = self._host.spec
        if model is not None and not spec.answers_to(model):
            raise UnknownModel(model, spec.name, spec.aliases)
        if encoding_format not in SUPPORTED_ENCODING_FORMATS:
            raise UnsupportedEncodingFormat(encoding_format)
        if not items:
            raise InvalidInput("no inputs given; send at least one text.")
        if len(items) > self._limits.max_batch_size:
            raise BatchTooLarge(len(items), self._limits.max_batch_size)
        for index, item in enumerate(items):
            if len(item.text) > self._limits.max_input_length:
                raise InputTooLong(item.id, len(item.text), self._limits.max_input_length)
            position = unpaired_surrogate(item.text)
            if position is not None:
                where = f"input with id {item.id!r}" if item.id is not None else f"input {index}"
                raise InvalidInput(
                    f"{where} holds an unpaired surrogate (U+{ord(item.text[position]):04X}) at character "
                    f"{position}, which no tokenizer can encode; send valid Unicode text."
                )
        return spec

    async def _embed(
        self, items: Sequence[TextItem], model: str | None, encoding_format: str, caller: Caller
    ) -> EmbeddingResult:
        arrived = time.monotonic()  # the deadline counts from here, cache lookup included
        spec = self._validate(items, model, encoding_format)
        embedder = self._host.embedder()
        texts = [item.text for item in items]
        if not self._cache.enabled:
            vectors = await self._scheduler.run(embedder, texts, arrived)
            return EmbeddingResult(
                model=spec.name,
                items=[EmbeddedItem(id=item.id, index=i, embedding=vectors[i]) for i, item in enumerate(items)],
                dimensions=spec.dimension,
            )
        keys, by_key, cached = await self._through_cache(embedder, caller, texts, arrived)
        return EmbeddingResult(
            model=spec.name,
            items=[
                EmbeddedItem(id=item.id, index=i, embedding=by_key[key], cached=key in cached)
                for i, (item, key) in enumerate(zip(items, keys, strict=True))
            ],
            dimensions=spec.dimension,
            cache_used=True,
        )

    async def _through_cache(
        self, embedder: Embedder, caller: Caller, texts: Sequence[str], arrived: float
    ) -> tuple[list[bytes], dict[bytes, Vector], set[bytes]]:
        """Look every distinct text key up once, embed only the misses (one scheduler call), store them."""
        info = embedder.info
        scope = CacheScope(caller.tenant, info.cache_model, info.cache_variant)
        keys = [text_key(info.text_key, text) for text in texts]
        first_text: dict[bytes, str] = {}
        for key, text in zip(keys, texts, strict=True):
            first_text.setdefault(key, text)
        found = _well_formed(await self._cache.lookup_in_time(scope, list(first_text)), info)
        missing = [key for key in first_text if key not in found]
        fresh: dict[bytes, Vector] = {}
        if missing:
            vectors = await self._scheduler.run(embedder, [first_text[key] for key in missing], arrived)
            fresh = dict(zip(missing, vectors, strict=True))
            await self._cache.save_in_time(scope, fresh)
        return keys, {**found, **fresh}, set(found)


def unpaired_surrogate(text: str) -> int | None:
    """Where `text` holds a UTF-16 surrogate code point (a JSON "\\ud800" escape without its pair), else None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _well_formed(found: Mapping[bytes, Vector], info: ModelInfo) -> dict[bytes, Vector]:
    """Cached rows of the model's dimension with finite values; anything else is logged and recomputed."""
    good = {
        key: vector
        for key, vector in found.items()
        if vector.shape == (info.spec.dimension,) and bool(np.isfinite(vector).all())
    }
    if len(good) != len(found):
        log.warning("ignored %d malformed cache entries (recomputing them)", len(found) - len(good))
    return good


class EmbedOne(_EmbedTexts):
    """Embed a single text, from the caller's cache when it holds it."""

    async def execute(
        self, text: str, model: str | None = None, encoding_format: str = "float", caller: Caller = ANONYMOUS
    ) -> EmbeddingResult:
        return await self._embed([TextItem(id=None, text=text)], model, encoding_format, caller)


class EmbedBatch(_EmbedTexts):
    """Embed a batch of texts, keeping order and echoing caller-supplied ids; cached texts are not recomputed and
    each distinct text is computed once."""

    async def execute(
        self,
        items: Sequence[TextItem],
        model: str | None = None,
        encoding_format: str = "float",
        caller: Caller = ANONYMOUS,
    ) -> EmbeddingResult:
        ids = [item.id for item in items if item.id is not None]
        if len(ids) != len(set(ids)):
            raise InvalidInput("ids must be unique within a batch.")
        return await self._embed(items, model, encoding_format, caller)


@dataclass(frozen=True)
class HealthReport:
    status: str
    model: str
    ready: bool


class GetHealth:
    """Report whether the served model is loaded and warm, and the cache's start-up preparation has run (ready does
    not depend on the cache being reachable: requests go on without it)."""

    def __init__(self, host: ModelHost, cache: FailSafeCache) -> None:
        self._host = host
        self._cache = cache

    def execute(self) -> HealthReport:
        state = self._host.state
        if state is ModelState.READY and not self._cache.settled:
            state = ModelState.LOADING
        return HealthReport(status=state.value, model=self._host.spec.name, ready=state is ModelState.READY)


class GetMetadata:
    """Describe the served model (name, dimension, revision, checksum, library version) and the request limits."""

    def __init__(self, host: ModelHost, limits: Limits) -> None:
        self._host = host
        self._limits = limits

    def execute(self) -> tuple[ModelInfo, Limits]:
        return self._host.embedder().info, self._limits


class AuthenticateCaller:
    """Find the tenant whose API key was presented: every configured key is compared, each in constant time.
    With no key configured (ALLOW_UNAUTHENTICATED) every caller is the `anonymous` tenant."""

    def __init__(self, keys_by_tenant: Mapping[str, str]) -> None:
        self._keys = [(tenant, key.encode()) for tenant, key in keys_by_tenant.items() if key]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def execute(self, presented: str | None) -> Caller:
        if not self._keys:
            return ANONYMOUS
        candidate = (presented or "").encode()
        matched: str | None = None
        for tenant, key in self._keys:
            if hmac.compare_digest(candidate, key) and matched is None:
                matched = tenant
        if matched is None:
            raise Unauthenticated()
        return Caller(tenant=matched)


@dataclass(frozen=True)
class CacheReport:
    tenant: str
    backend: str
    stats: CacheStats


class GetCacheStats:
    """The caller's cache counters: hits, misses and entries it owns."""

    def __init__(self, cache: FailSafeCache) -> None:
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
