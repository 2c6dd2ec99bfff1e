"""Token counts for admission and batch planning, from a model's own fast tokenizer (tokenizer.json)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class TokenCounter:
    """How many tokens each text takes in a model call (special tokens included, truncated at the model's limit).

    A copy of the tokenizer of its own, never padding: admission counts on the event loop and in helper threads
    while the inference thread tokenizes for the model, and a tokenizer a model call reconfigures per call (the
    transformers one sets padding and truncation on every call) must not be shared with it.
    """

    def __init__(self, tokenizer_json: Path, max_length: int) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(tokenizer_json))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_length)

    def counts(self, texts: Sequence[str]) -> list[int]:
        return [len(encoding.ids) for encoding in self._tokenizer.encode_batch(list(texts))]
