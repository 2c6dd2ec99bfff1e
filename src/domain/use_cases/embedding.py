"""Embedding use cases: one text or a batch, through the caller's cache; usage of metered callers is recorded."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import TypeVar

import numpy as np

from domain.errors import (
    BatchTooLarge,
    ByokRequired,
    InputTooLong,
    InvalidInput,
    ModelNotReady,
    ProviderUnavailable,
    UnsupportedDimensions,
    UnsupportedEncodingFormat,
)
from domain.model import (
    SHARED_POOL,
    CacheScope,
    Caller,
    EmbeddedItem,
    EmbedInput,
    InputType,
    Limits,
    ModelInfo,
    Provider,
    TextItem,
    TextKeyRule,
    Tier,
    TokenIds,
    UsageRecord,
    Vector,
)
from domain.ports import (
    Embedder,
    ProviderStore,
    RemoteEmbedder,
    RequestCache,
    SecretBox,
    UsageRecorder,
)
from domain.services import ModelPool, ServedModel, input_key, text_key
from domain.use_cases.keys import ANONYMOUS

log = logging.getLogger(__name__)
T = TypeVar("T")

SUPPORTED_ENCODING_FORMATS = ("float",)


@dataclass(frozen=True)
class EmbeddingResult:
    model: str
    items: list[EmbeddedItem]
    dimensions: int
    cache_used: bool = False  # False: no cache configured, so `cached` says nothing
    compute_ms: float = 0.0  # time in the model's queue and calls (0 when every text came from the cache)
    tokens: int | None = None  # tokens of the inputs in a model call (after truncation); None: not counted
    source: str = "local"  # what computed the texts the cache did not hold: local (this server's model) or provider

    @property
    def cache_hits(self) -> list[int]:
        return [item.index for item in self.items if item.cached]

    @property
    def served_by(self) -> str:
        """cache (every input came from it), local or provider."""
        return "cache" if self.items and all(item.cached for item in self.items) else self.source


@dataclass(frozen=True)
class ByokRouting:
    """Hosted mode: a free-tier account's texts are computed by its own provider (bring your own key) unless the
    operator serves the free tier locally (FREE_TIER_COMPUTE=local); paid accounts and static keys use this
    server's model."""

    providers: ProviderStore
    box: SecretBox
    remote: RemoteEmbedder
    free_tier_compute: str = "byok"

    def applies_to(self, caller: Caller) -> bool:
        return caller.account_id is not None and caller.tier is Tier.FREE and self.free_tier_compute == "byok"


PROVIDER_VARIANT = "provider/float32-l2"  # provider vectors, L2-normalized here
VERBATIM = TextKeyRule()  # a provider's tokenizer is unknown: its texts are keyed as sent


INLINE_TOKEN_COUNT_CHARS = 4096  # counting tokens of shorter requests costs less than a thread hop


class _EmbedTexts:
    def __init__(
        self,
        models: ModelPool,
        limits: Limits,
        cache: RequestCache,
        usage: UsageRecorder | None = None,
        byok: ByokRouting | None = None,
    ) -> None:
        self._models = models
        self._limits = limits
        self._cache = cache
        self._usage = usage
        self._byok = byok

    def _remote(self, caller: Caller | None) -> bool:
        return self._byok is not None and caller is not None and self._byok.applies_to(caller)

    def check(
        self,
        items: Sequence[TextItem],
        model: str | None = None,
        encoding_format: str = "float",
        caller: Caller | None = None,
    ) -> None:
        """Raise what `execute` would raise for these inputs before any work (a caller's quota is checked after)."""
        if self._remote(caller):
            self._validate(items, None, encoding_format)
            _texts_only(items)
            return
        served = self._validate(items, model, encoding_format)
        try:
            embedder = served.host.embedder()
        except ModelNotReady:
            return  # (token ids are checked against its vocabulary once it is loaded)
        _check_token_ids(items, embedder)

    def _validate(self, items: Sequence[TextItem], model: str | None, encoding_format: str) -> ServedModel:
        served = self._models.pick(model)
        if encoding_format not in SUPPORTED_ENCODING_FORMATS:
            raise UnsupportedEncodingFormat(encoding_format)
        if not items:
            raise InvalidInput("no inputs given; send at least one text.")
        if len(items) > self._limits.max_batch_size:
            raise BatchTooLarge(len(items), self._limits.max_batch_size)
        for index, item in enumerate(items):
            unit = "token ids" if isinstance(item.text, TokenIds) else "characters"
            if len(item.text) > self._limits.max_input_length:
                number = index if len(items) > 1 else None
                raise InputTooLong(item.id, len(item.text), self._limits.max_input_length, unit, number)
            if isinstance(item.text, TokenIds):
                continue
            position = unpaired_surrogate(item.text)
            if position is not None:
                where = f"input with id {item.id!r}" if item.id is not None else f"input {index}"
                raise InvalidInput(
                    f"{where} holds an unpaired surrogate (U+{ord(item.text[position]):04X}) at character "
                    f"{position}, which no tokenizer can encode; send valid Unicode text."
                )
        return served

    async def _embed(
        self,
        items: Sequence[TextItem],
        model: str | None,
        encoding_format: str,
        caller: Caller,
        public: bool,
        count_tokens: bool = False,
        input_type: InputType = InputType.DOCUMENT,
    ) -> EmbeddingResult:
        arrived = time.monotonic()  # the deadline counts from here, cache lookup included
        metered = caller.metered and self._usage is not None
        day = datetime.now(UTC).date() if metered else None  # usage: the UTC day it arrived on, as its quota
        if self._remote(caller):
            result = await self._embed_remote(items, encoding_format, caller, count_tokens)
            if day is not None:
                self._record(caller, [item.text for item in items], result, day)
            return result
        served = self._validate(items, model, encoding_format)
        spec = served.spec
        embedder = served.host.embedder()
        _check_token_ids(items, embedder)
        texts = prompted([item.text for item in items], spec.prompt_for(input_type))
        if not self._cache.enabled:
            started = time.monotonic()
            vectors = await served.scheduler.run(embedder, texts, arrived)
            result = EmbeddingResult(
                model=spec.name,
                items=[EmbeddedItem(id=item.id, index=i, embedding=vectors[i]) for i, item in enumerate(items)],
                dimensions=spec.dimension,
                compute_ms=(time.monotonic() - started) * 1000,
            )
        else:
            keys, by_key, cached, compute_s = await self._through_cache(
                served, embedder, caller, texts, arrived, public
            )
            result = EmbeddingResult(
                model=spec.name,
                items=[
                    EmbeddedItem(id=item.id, index=i, embedding=by_key[key], cached=key in cached)
                    for i, (item, key) in enumerate(zip(items, keys, strict=True))
                ],
                dimensions=spec.dimension,
                cache_used=True,
                compute_ms=compute_s * 1000,
            )
        if count_tokens or day is not None:
            result = replace(result, tokens=await _count_tokens(embedder, texts))
        if day is not None:
            self._record(caller, texts, result, day)
        return result

    async def _embed_remote(
        self, items: Sequence[TextItem], encoding_format: str, caller: Caller, count_tokens: bool
    ) -> EmbeddingResult:
        """The caller's own provider computes what the caller's cache does not hold (never the shared pool: its
        entries are another provider's, or this server's); its vectors are cached under the provider's identity."""
        assert self._byok is not None and caller.account_id is not None
        self._validate(items, None, encoding_format)
        _texts_only(items)
        provider = await asyncio.to_thread(self._byok.providers.get, caller.account_id)
        if provider is None:
            raise ByokRequired()
        identity = self._byok.remote.identity(provider.config)
        texts = [str(item.text) for item in items]
        keys = [text_key(VERBATIM, text) for text in texts]
        first_text = _first_of_each(keys, texts)
        scope = CacheScope(caller.tenant, f"provider:{identity}", PROVIDER_VARIANT)
        found: dict[bytes, Vector] = {}
        if self._cache.enabled:
            looked_up = await self._cache.lookup_in_time(scope, list(first_text), shared_pool=False)
            found = {key: v for key, v in looked_up.items() if v.ndim == 1 and bool(np.isfinite(v).all())}
        if len({v.shape for v in found.values()}) > 1:  # rows of two dimensions: the provider's model changed
            found = {}
        missing = [key for key in first_text if key not in found]
        compute_s = 0.0
        if missing:
            started = time.monotonic()
            api_key = self._decrypt(provider)
            vectors = await self._byok.remote.embed(provider.config, api_key, [first_text[key] for key in missing])
            if any(v.shape != (vectors.shape[1],) for v in found.values()):  # it answers in another dimension now
                missing, found = list(first_text), {}
                vectors = await self._byok.remote.embed(provider.config, api_key, list(first_text.values()))
            compute_s = time.monotonic() - started
            fresh = dict(zip(missing, vectors, strict=True))
            if self._cache.enabled:
                await self._cache.save_in_time(scope, fresh)
            found = {**found, **fresh}
        computed = set(missing)
        dimension = next(iter(found.values())).shape[0]
        return EmbeddingResult(
            model=identity,
            items=[
                EmbeddedItem(id=item.id, index=i, embedding=found[key], cached=key not in computed)
                for i, (item, key) in enumerate(zip(items, keys, strict=True))
            ],
            dimensions=dimension,
            cache_used=self._cache.enabled,
            compute_ms=compute_s * 1000,
            tokens=0 if count_tokens else None,  # a provider's tokens are its own; none are counted here
            source="provider",
        )

    def _decrypt(self, provider: Provider) -> str:
        assert self._byok is not None
        try:
            return self._byok.box.decrypt(provider.encrypted_key)
        except ValueError:  # ENCRYPTION_KEY lost the key it was encrypted with (dropped before rotate-keys)
            log.error("the key of provider %s cannot be decrypted with ENCRYPTION_KEY", provider.id)
            raise ProviderUnavailable("its stored key cannot be decrypted here; register the provider again") from None

    def _record(self, caller: Caller, texts: Sequence[EmbedInput], result: EmbeddingResult, day: date) -> None:
        """One request's usage into the (buffered) ledger: texts, tokens, hits and misses per text, compute time."""
        assert self._usage is not None and caller.account_id is not None
        tokens = result.tokens or 0
        hits = len(result.cache_hits)
        self._usage.record(
            UsageRecord(
                account_id=caller.account_id,
                day=day,
                model=result.model,
                requests=1,
                texts=len(texts),
                tokens=tokens,
                cache_hits=hits,
                cache_misses=len(texts) - hits if result.cache_used else 0,
                compute_ms=round(result.compute_ms, 3),
            )
        )

    async def _through_cache(
        self,
        served: ServedModel,
        embedder: Embedder,
        caller: Caller,
        texts: Sequence[EmbedInput],
        arrived: float,
        public: bool,
    ) -> tuple[list[bytes], dict[bytes, Vector], set[bytes], float]:
        """Look every distinct text key up once (the caller's own entries first, then the shared pool's), embed only
        the misses (one scheduler call), store them: in the caller's entries, or the shared pool when `public`."""
        info = embedder.info
        scope = CacheScope(caller.tenant, info.cache_model, info.cache_variant)
        keys = [input_key(info.text_key, text) for text in texts]
        first_text = _first_of_each(keys, texts)
        found = _well_formed(await self._cache.lookup_in_time(scope, list(first_text)), info)
        missing = [key for key in first_text if key not in found]
        fresh: dict[bytes, Vector] = {}
        compute_s = 0.0
        if missing:
            started = time.monotonic()
            vectors = await served.scheduler.run(embedder, [first_text[key] for key in missing], arrived)
            compute_s = time.monotonic() - started
            fresh = dict(zip(missing, vectors, strict=True))
            target = CacheScope(SHARED_POOL, scope.model, scope.variant) if public else scope
            await self._cache.save_in_time(target, fresh)
        return keys, {**found, **fresh}, set(found), compute_s


def prompted(texts: Sequence[EmbedInput], prompt: str) -> list[EmbedInput]:
    """What the model is given: each text behind the prompt of its input type (as sentence-transformers prefixes it),
    token ids with the prompt's tokens before them; so the prompt applied is part of each input's cache key too."""
    if not prompt:
        return list(texts)
    return [prompt + text if isinstance(text, str) else replace(text, prompt=prompt) for text in texts]


async def _count_tokens(embedder: Embedder, texts: Sequence[EmbedInput]) -> int:
    if sum(map(len, texts)) <= INLINE_TOKEN_COUNT_CHARS:
        return sum(embedder.token_counts(texts))
    return sum(await asyncio.to_thread(embedder.token_counts, texts))


def _first_of_each(keys: Sequence[bytes], texts: Sequence[T]) -> dict[bytes, T]:
    """Each distinct key with the first text that has it, in request order: each distinct text is computed once."""
    first: dict[bytes, T] = {}
    for key, text in zip(keys, texts, strict=True):
        first.setdefault(key, text)
    return first


def _texts_only(items: Sequence[TextItem]) -> None:
    if any(isinstance(item.text, TokenIds) for item in items):
        raise InvalidInput("token ids are ids of this server's model; your provider takes texts: send texts.")


def _check_token_ids(items: Sequence[TextItem], embedder: Embedder) -> None:
    """Token ids must be the model's, and not only its special ones or padding (an empty input, in disguise)."""
    vocabulary_size, special = embedder.vocabulary_size, embedder.special_token_ids
    for index, item in enumerate(items):
        if isinstance(item.text, TokenIds):
            wrong = next((i for i in item.text.ids if not 0 <= i < vocabulary_size), None)
            if wrong is not None:
                raise InvalidInput(
                    f"input {index} holds token id {wrong}, outside the served model's vocabulary (0 to "
                    f"{vocabulary_size - 1}); send ids of this model's own tokenizer, not another's (tiktoken's)."
                )
            if all(i in special for i in item.text.ids):
                raise InvalidInput(
                    f"input {index} holds only the model's special tokens or padding, no text; every input must "
                    "hold at least one token of text."
                )


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
        self,
        text: str,
        model: str | None = None,
        encoding_format: str = "float",
        caller: Caller = ANONYMOUS,
        public: bool = False,
        input_type: InputType = InputType.DOCUMENT,
    ) -> EmbeddingResult:
        items = [TextItem(id=None, text=text)]
        return await self._embed(items, model, encoding_format, caller, public, input_type=input_type)


class EmbedBatch(_EmbedTexts):
    """Embed a batch of texts, keeping order and echoing caller-supplied ids; cached texts are not recomputed and
    each distinct text is computed once."""

    async def execute(
        self,
        items: Sequence[TextItem],
        model: str | None = None,
        encoding_format: str = "float",
        caller: Caller = ANONYMOUS,
        public: bool = False,
        input_type: InputType = InputType.DOCUMENT,
    ) -> EmbeddingResult:
        self._unique_ids(items)
        return await self._embed(items, model, encoding_format, caller, public, input_type=input_type)

    def check(
        self,
        items: Sequence[TextItem],
        model: str | None = None,
        encoding_format: str = "float",
        caller: Caller | None = None,
    ) -> None:
        self._unique_ids(items)
        super().check(items, model, encoding_format, caller)

    @staticmethod
    def _unique_ids(items: Sequence[TextItem]) -> None:
        ids = [item.id for item in items if item.id is not None]
        if len(ids) != len(set(ids)):
            raise InvalidInput("ids must be unique within a batch.")


class EmbedInputs(_EmbedTexts):
    """Embed texts or token-id arrays as OpenAI's embeddings request asks: up to its own input limit, no empty
    input, the token count of every request reported, and vectors truncated to `dimensions` (re-normalized) only
    for a model trained for that size."""

    async def execute(
        self,
        items: Sequence[TextItem],
        model: str | None = None,
        caller: Caller = ANONYMOUS,
        dimensions: int | None = None,
        public: bool = False,
        input_type: InputType = InputType.DOCUMENT,
    ) -> EmbeddingResult:
        self._check_inputs(items, model, dimensions, caller)
        result = await self._embed(items, model, "float", caller, public, count_tokens=True, input_type=input_type)
        if dimensions is None or dimensions == result.dimensions:
            return result
        if result.source == "provider":  # it answered in its own dimension: the template sets any other
            raise UnsupportedDimensions(dimensions, result.model, result.dimensions, ())
        return replace(
            result,
            items=[replace(item, embedding=_truncated(item.embedding, dimensions)) for item in result.items],
            dimensions=dimensions,
        )

    def check(
        self,
        items: Sequence[TextItem],
        model: str | None = None,
        encoding_format: str = "float",
        caller: Caller | None = None,
        dimensions: int | None = None,
    ) -> None:
        self._check_inputs(items, model, dimensions, caller)
        super().check(items, model, encoding_format, caller)

    def _check_inputs(
        self, items: Sequence[TextItem], model: str | None, dimensions: int | None, caller: Caller | None
    ) -> None:
        """On a provider (hosted free tier), `model` and `dimensions` are the provider's business: its template
        names its model, and its answer has the dimension it has."""
        remote = self._remote(caller)
        spec = None if remote else self._models.pick(model).spec  # first: dimensions are of that model
        empty = next((i for i, item in enumerate(items) if len(item.text) == 0), None)
        if empty is not None:
            raise InvalidInput(f"input {empty} is empty; every input must hold at least one character or token id.")
        if spec is None:
            return
        if dimensions is not None and dimensions != spec.dimension and dimensions not in spec.matryoshka_dimensions:
            raise UnsupportedDimensions(dimensions, spec.name, spec.dimension, spec.matryoshka_dimensions)


def _truncated(vector: Vector, dimensions: int) -> Vector:
    """The first `dimensions` components of a Matryoshka-trained model's vector, L2-normalized again."""
    head = np.asarray(vector[:dimensions], dtype=np.float32)
    norm = float(np.linalg.norm(head))
    return head / norm if norm > 0 else head
