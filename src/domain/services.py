"""Domain services: model lifecycle, the backend agreement rule, length-sorted batching of one caller's texts and
cache keys."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from domain.errors import BackendDisagrees, ModelNotReady, UnknownModel
from domain.model import EmbedInput, ModelSpec, TextKeyRule, TokenIds, Vectors
from domain.ports import Embedder, EmbedderLoader, InferenceScheduler

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


@dataclass(frozen=True)
class ServedModel:
    """One served model: its host (loader, agreement gate, readiness) and its own batcher."""

    host: ModelHost
    scheduler: InferenceScheduler

    @property
    def spec(self) -> ModelSpec:
        return self.host.spec


class ModelPool:
    """The models this process serves (MODELS; MODEL_NAME alone is a pool of one), the first the default. A request's
    `model` picks one by short name or hub id."""

    def __init__(self, served: Sequence[ServedModel]) -> None:
        if not served:
            raise ValueError("a pool serves at least one model")
        self._served = tuple(served)

    @property
    def default(self) -> ServedModel:
        return self._served[0]

    @property
    def served(self) -> tuple[ServedModel, ...]:
        return self._served

    @property
    def specs(self) -> list[ModelSpec]:
        return [model.spec for model in self._served]

    def pick(self, requested: str | None) -> ServedModel:
        """The model a request names (None: the default); UnknownModel names the served ones."""
        if requested is None:
            return self.default
        for model in self._served:
            if model.spec.answers_to(requested):
                return model
        raise UnknownModel(requested, tuple(spec.name for spec in self.specs), self.aliases)

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(alias for spec in self.specs for alias in spec.aliases)

    @property
    def state(self) -> ModelState:
        """Ready when every model is; failed when any failed; else loading."""
        states = {model.host.state for model in self._served}
        if ModelState.FAILED in states:
            return ModelState.FAILED
        return ModelState.READY if states == {ModelState.READY} else ModelState.LOADING


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


def input_key(rule: TextKeyRule, value: EmbedInput) -> bytes:
    """The cache key of an input: a text's `text_key`; token ids hashed behind a 0xFF byte, which no UTF-8 text
    holds, so they never share a key with a text."""
    if isinstance(value, TokenIds):
        prompt = b"\x00prompt:" + value.prompt.encode("utf-8", "surrogatepass") if value.prompt else b""
        return hashlib.sha256(b"\xfftoken-ids:" + ",".join(map(str, value.ids)).encode("ascii") + prompt).digest()
    return text_key(rule, value)


def text_key(rule: TextKeyRule, text: str) -> bytes:
    """The cache key of a text: sha256 of its key-normalized UTF-8 (lone surrogates kept), never the text itself."""
    return hashlib.sha256(rule.normalize(text).encode("utf-8", "surrogatepass")).digest()
