"""Ports: the interfaces the domain needs from the outside world, as structural Protocols."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from domain.model import ModelInfo, ModelSpec, Vectors


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

    Raises Overloaded when the queue is full, Timeout when the deadline passes, BackendFailure when the model fails.
    """

    async def run(self, embedder: Embedder, texts: Sequence[str]) -> Vectors: ...

    def shutdown(self) -> None: ...


class EmbedderLoader(Protocol):
    """Provisions (if needed), loads and pre-warms the configured model; slow, called once at start-up."""

    @property
    def spec(self) -> ModelSpec: ...

    def load(self) -> Embedder: ...


class ModelProvisioner(Protocol):
    """Makes verified weights of a model available on local disk and returns their folder."""

    def ensure(self, spec: ModelSpec) -> Path: ...
