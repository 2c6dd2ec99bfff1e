"""sentence-transformers backend: the only module that imports torch and sentence_transformers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

from domain.model import ModelInfo, ModelSpec, Vectors
from domain.ports import ModelProvisioner

log = logging.getLogger(__name__)

WARM_UP_TEXTS = ("warm-up", "A slightly longer warm-up sentence so the first real request is not the slow one.")


def pick_device(requested: str) -> str:
    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerEmbedder:
    def __init__(self, model: Any, info: ModelInfo) -> None:
        self._model = model
        self._info = info

    @property
    def info(self) -> ModelInfo:
        return self._info

    def embed(self, texts: Sequence[str]) -> Vectors:
        with torch.inference_mode():
            vectors = self._model.encode(
                list(texts),
                batch_size=max(1, len(texts)),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)


class SentenceTransformerLoader:
    """Provisions verified weights, loads them with sentence-transformers and pre-warms the model."""

    def __init__(self, spec: ModelSpec, provisioner: ModelProvisioner, device: str = "auto") -> None:
        self._spec = spec
        self._provisioner = provisioner
        self._device = device

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def load(self) -> SentenceTransformerEmbedder:
        path = self._provisioner.ensure(self._spec)
        device = pick_device(self._device)
        model = SentenceTransformer(str(path), device=device, local_files_only=True)
        model.eval()
        info = ModelInfo(spec=self._spec, library_version=sentence_transformers.__version__, device=device)
        embedder = SentenceTransformerEmbedder(model, info)
        embedder.embed(list(WARM_UP_TEXTS))
        log.info("model %s loaded from %s on %s and warmed up", self._spec.name, path, device)
        return embedder
