"""Use cases: what callers of the service can do, each a class with `execute()`."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from domain.errors import (
    BatchTooLarge,
    InputTooLong,
    InvalidInput,
    Unauthenticated,
    UnknownModel,
    UnsupportedEncodingFormat,
)
from domain.model import EmbeddedItem, Limits, ModelInfo, ModelSpec, TextItem
from domain.ports import InferenceScheduler
from domain.services import ModelHost, ModelState

SUPPORTED_ENCODING_FORMATS = ("float",)


@dataclass(frozen=True)
class EmbeddingResult:
    model: str
    items: list[EmbeddedItem]


class _EmbedTexts:
    def __init__(self, host: ModelHost, scheduler: InferenceScheduler, limits: Limits) -> None:
        self._host = host
        self._scheduler = scheduler
        self._limits = limits

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
        for item in items:
            if len(item.text) > self._limits.max_input_length:
                raise InputTooLong(item.id, len(item.text), self._limits.max_input_length)
        return spec

    async def _embed(self, items: Sequence[TextItem], model: str | None, encoding_format: str) -> EmbeddingResult:
        spec = self._validate(items, model, encoding_format)
        vectors = await self._scheduler.run(self._host.embedder(), [item.text for item in items])
        return EmbeddingResult(
            model=spec.name,
            items=[EmbeddedItem(id=item.id, index=i, embedding=vectors[i]) for i, item in enumerate(items)],
        )


class EmbedOne(_EmbedTexts):
    """Embed a single text."""

    async def execute(self, text: str, model: str | None = None, encoding_format: str = "float") -> EmbeddingResult:
        return await self._embed([TextItem(id=None, text=text)], model, encoding_format)


class EmbedBatch(_EmbedTexts):
    """Embed a batch of texts, keeping order and echoing caller-supplied ids."""

    async def execute(
        self, items: Sequence[TextItem], model: str | None = None, encoding_format: str = "float"
    ) -> EmbeddingResult:
        ids = [item.id for item in items if item.id is not None]
        if len(ids) != len(set(ids)):
            raise InvalidInput("ids must be unique within a batch.")
        return await self._embed(items, model, encoding_format)


@dataclass(frozen=True)
class HealthReport:
    status: str
    model: str
    ready: bool


class GetHealth:
    """Report whether the served model is loaded and warm."""

    def __init__(self, host: ModelHost) -> None:
        self._host = host

    def execute(self) -> HealthReport:
        state = self._host.state
        return HealthReport(status=state.value, model=self._host.spec.name, ready=state is ModelState.READY)


class GetMetadata:
    """Describe the served model (name, dimension, revision, checksum, library version) and the request limits."""

    def __init__(self, host: ModelHost, limits: Limits) -> None:
        self._host = host
        self._limits = limits

    def execute(self) -> tuple[ModelInfo, Limits]:
        return self._host.embedder().info, self._limits


class AuthenticateCaller:
    """Accept a presented API key only if it equals one of the configured keys (constant-time comparison)."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = [key.encode() for key in keys if key]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def execute(self, presented: str | None) -> None:
        if not self._keys:
            return
        candidate = (presented or "").encode()
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise Unauthenticated()
