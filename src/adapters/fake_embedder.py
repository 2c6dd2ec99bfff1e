"""Deterministic fake embedder: same text -> same unit vector, in any process; usable as a real backend."""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Sequence

import numpy as np

from domain.model import EmbedInput, ModelInfo, ModelSpec, TokenIds, Vectors

FAKE_VOCABULARY_SIZE = 30522
FAKE_SPECIAL_TOKEN_IDS = frozenset({0, 101, 102})  # BERT's [PAD], [CLS] and [SEP]


class FakeEmbedder:
    def __init__(self, spec: ModelSpec, delay_per_text_s: float = 0.0) -> None:
        self._info = ModelInfo(spec=spec, library_version="fake", device="cpu", backend="fake")
        self._delay = delay_per_text_s
        self.calls: deque[int] = deque(maxlen=10_000)  # sizes of recent calls, for tests

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def vocabulary_size(self) -> int:
        return FAKE_VOCABULARY_SIZE

    @property
    def special_token_ids(self) -> frozenset[int]:
        return FAKE_SPECIAL_TOKEN_IDS

    def embed(self, texts: Sequence[EmbedInput]) -> Vectors:
        self.calls.append(len(texts))
        if self._delay:
            time.sleep(self._delay * len(texts))
        return np.stack([self._vector(t) for t in texts]).astype(np.float32)

    def token_counts(self, texts: Sequence[EmbedInput]) -> list[int]:
        """Words (or token ids) plus two special tokens, truncated at the model's max sequence length."""
        return [min(_words(text) + 2, self._info.spec.max_seq_length) for text in texts]

    def _vector(self, text: EmbedInput) -> Vectors:
        """Token ids give the vector of their words: ids [7, 8] embed like the text "7 8"."""
        words = text.prompt + " ".join(map(str, text.ids)) if isinstance(text, TokenIds) else text
        seed = int.from_bytes(hashlib.sha256(words.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(self._info.spec.dimension)
        return (v / np.linalg.norm(v)).astype(np.float32)


def _words(text: EmbedInput) -> int:
    return len(text) + len(text.prompt.split()) if isinstance(text, TokenIds) else len(text.split())


class FakeEmbedderLoader:
    """Loads a FakeEmbedder, optionally after a delay or failing, to exercise readiness."""

    def __init__(
        self, spec: ModelSpec, load_delay_s: float = 0.0, fail: bool = False, delay_per_text_s: float = 0.0
    ) -> None:
        self._spec = spec
        self._load_delay = load_delay_s
        self._fail = fail
        self._delay_per_text = delay_per_text_s

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def load(self) -> FakeEmbedder:
        if self._load_delay:
            time.sleep(self._load_delay)
        if self._fail:
            raise RuntimeError("fake model failed to load")
        return FakeEmbedder(self._spec, self._delay_per_text)
