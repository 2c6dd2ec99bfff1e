"""Token counts for admission and batch planning, and the token ids a model call gets, from a model's own fast
tokenizer (tokenizer.json)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from domain.model import EmbedInput, TokenIds


@dataclass(frozen=True)
class TokenFraming:
    """How the model's tokenizer frames a text's tokens: the special ids it puts before and after them ([CLS] and
    [SEP], <s> and </s>) and the limit it truncates at. Token ids sent by a caller are framed the same way, whether
    they hold the special ids already (what the tokenizer returns by default) or not (add_special_tokens=False), so
    they give the vector of the text they encode."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    max_length: int
    pad_id: int | None = None

    @classmethod
    def of(cls, tokenizer: Any, max_length: int, pad_id: int | None = None) -> TokenFraming:
        framed = tokenizer.encode("a", add_special_tokens=True).ids
        bare = tokenizer.encode("a", add_special_tokens=False).ids
        start = next(i for i in range(len(framed) - len(bare) + 1) if framed[i : i + len(bare)] == bare)
        return cls(tuple(framed[:start]), tuple(framed[start + len(bare) :]), max_length, pad_id)

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset({*self.prefix, *self.suffix, *(() if self.pad_id is None else (self.pad_id,))})

    def frame(self, ids: Sequence[int], prompt: Sequence[int] = ()) -> list[int]:
        """The ids with the special ones in place, truncated like a text's; padding sent along (on either side) is
        dropped. `prompt` (the ids of a query/document prompt) goes right after the leading special ids, where the
        prompt's tokens are when it is put before a text."""
        start, end = 0, len(ids)
        while self.pad_id is not None and start < end and ids[start] == self.pad_id:
            start += 1
        while self.pad_id is not None and end > start and ids[end - 1] == self.pad_id:
            end -= 1
        content = list(ids[start:end])
        if self.prefix and tuple(content[: len(self.prefix)]) == self.prefix:
            content = content[len(self.prefix) :]
        if self.suffix and len(content) >= len(self.suffix) and tuple(content[-len(self.suffix) :]) == self.suffix:
            content = content[: -len(self.suffix)]
        content = [*prompt, *content]
        room = max(0, self.max_length - len(self.prefix) - len(self.suffix))
        return [*self.prefix, *content[:room], *self.suffix]


class TokenCounter:
    """How many tokens each input takes in a model call (special tokens included, truncated at the model's limit),
    and the ids the call gets.

    A copy of the tokenizer of its own, never padding: admission counts on the event loop and in helper threads
    while the inference thread tokenizes for the model, and a tokenizer a model call reconfigures per call (the
    transformers one sets padding and truncation on every call) must not be shared with it.
    """

    def __init__(self, tokenizer_json: Path, max_length: int) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(tokenizer_json))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_length)
        pad_id = self._tokenizer.token_to_id(_pad_token(tokenizer_json.parent / "tokenizer_config.json") or "")
        self.framing = TokenFraming.of(self._tokenizer, max_length, pad_id)
        self.vocabulary_size = _vocabulary_size(self._tokenizer, tokenizer_json.parent / "config.json")

    def counts(self, texts: Sequence[EmbedInput]) -> list[int]:
        return [len(ids) for ids in self.ids(texts)]

    def padded(self, inputs: Sequence[EmbedInput]) -> dict[str, np.ndarray]:
        """The inputs as one model call takes them: ids padded on the right to the longest, and the attention mask."""
        rows = self.ids(inputs)
        width = max(len(row) for row in rows)
        input_ids = np.full((len(rows), width), self.framing.pad_id or 0, dtype=np.int64)
        attention_mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = row
            attention_mask[i, : len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def ids(self, inputs: Sequence[EmbedInput]) -> list[list[int]]:
        """The token ids of each input as the model gets them (framed, truncated), not padded."""
        texts = [value for value in inputs if isinstance(value, str)]
        encoded = iter(self._tokenizer.encode_batch(texts) if texts else ())
        return [self._framed(v) if isinstance(v, TokenIds) else next(encoded).ids for v in inputs]

    def _framed(self, value: TokenIds) -> list[int]:
        prompt = self._tokenizer.encode(value.prompt, add_special_tokens=False).ids if value.prompt else ()
        return self.framing.frame(value.ids, prompt)


def _pad_token(tokenizer_config: Path) -> str | None:
    try:
        pad = json.loads(tokenizer_config.read_text()).get("pad_token")
    except (OSError, ValueError):
        return None
    return str(pad["content"] if isinstance(pad, dict) else pad) if pad else None


def _vocabulary_size(tokenizer: Any, config_json: Path) -> int:
    """Ids the tokenizer knows and the model has an embedding row for."""
    size = int(tokenizer.get_vocab_size(with_added_tokens=True))
    try:
        return min(size, int(json.loads(config_json.read_text())["vocab_size"]))
    except (OSError, ValueError, KeyError, TypeError):
        return size
