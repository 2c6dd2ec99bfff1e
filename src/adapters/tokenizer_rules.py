"""What a model's tokenizer (its tokenizer.json) lets the cache key ignore: see domain.model.TextKeyRule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from domain.model import BERT_WHITESPACE, TextKeyRule


def text_key_rule(tokenizer_json: Path) -> TextKeyRule:
    """Whitespace runs and letter case are ignored only for the tokenizer setup this service has verified on every
    code point (tests/integration/test_text_keys.py): a BertNormalizer that cleans text and lowercases (accents
    stripped by default), followed by the BERT pre-tokenizer. Anything else is keyed verbatim."""
    config: dict[str, Any] = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    normalizer = config.get("normalizer") or {}
    pre_tokenizer = config.get("pre_tokenizer") or {}
    verified = (
        normalizer.get("type") == "BertNormalizer"
        and normalizer.get("clean_text") is True
        and normalizer.get("lowercase") is True
        and normalizer.get("strip_accents") in (None, True)
        and pre_tokenizer.get("type") == "BertPreTokenizer"
    )
    markers = tuple(sorted({token["content"].lower() for token in config.get("added_tokens", [])}))
    if not verified or any(ch in BERT_WHITESPACE for marker in markers for ch in marker):
        return TextKeyRule()
    return TextKeyRule(collapse_whitespace=True, lowercase=True, verbatim_if_contains=markers)
