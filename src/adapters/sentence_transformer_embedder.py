"""sentence-transformers backend: the only module that imports torch, transformers and sentence_transformers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer
from transformers.utils import logging as transformers_logging

from domain.model import ModelInfo, ModelSpec, Vectors

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


def load_sentence_transformer(spec: ModelSpec, path: str, requested_device: str) -> SentenceTransformerEmbedder:
    """Load verified weights from `path`, pre-warm them and wrap them as an Embedder."""
    transformers_logging.disable_progress_bar()
    device = pick_device(requested_device)
    model = SentenceTransformer(path, device=device, local_files_only=True)
    model.eval()
    info = ModelInfo(spec=spec, library_version=sentence_transformers.__version__, device=device)
    embedder = SentenceTransformerEmbedder(model, info)
    embedder.embed(list(WARM_UP_TEXTS))
    log.info("model %s loaded from %s on %s and warmed up", spec.name, path, device)
    return embedder
