"""Loader for the sentence-transformers backend; torch is imported only when `load()` runs, in a worker thread."""

from __future__ import annotations

from domain.model import ModelSpec
from domain.ports import Embedder, ModelProvisioner


class SentenceTransformerLoader:
    """Provisions verified weights, loads them with sentence-transformers and pre-warms the model."""

    def __init__(self, spec: ModelSpec, provisioner: ModelProvisioner, device: str = "auto") -> None:
        self._spec = spec
        self._provisioner = provisioner
        self._device = device

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def load(self) -> Embedder:
        path = self._provisioner.ensure(self._spec)
        from adapters.sentence_transformer_embedder import load_sentence_transformer

        return load_sentence_transformer(self._spec, str(path), self._device)
