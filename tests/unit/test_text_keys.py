"""Cache-key normalization rules, without a model: what is folded, what is kept verbatim, and which tokenizer
configurations allow folding at all (the real tokenizers are checked in tests/integration/test_text_keys.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adapters.tokenizer_rules import text_key_rule
from domain.model import TextKeyRule
from domain.services import text_key

BERT = TextKeyRule(collapse_whitespace=True, lowercase=True, verbatim_if_contains=("[cls]", "[mask]", "<mask>"))


@pytest.mark.parametrize(
    ("text", "key_text"),
    [
        ("  Ada\tLovelace \n", "ada lovelace"),
        ("JAZZ\u00a0\u3000night", "jazz night"),
        ("ΟΔΟΣ", "οδοσ"),  # per character, as the tokenizer lowercases: str.lower() would give a final ς
        ("İstanbul", "i̇stanbul"),
        ("a\x0bb", "a\x0bb"),  # \x0b is deleted by the tokenizer, not turned into a space: kept
        ("a\x1cb", "a\x1cb"),  # Python's str.split() would treat it as whitespace; the tokenizer deletes it
        ("a\u200bb", "a\u200bb"),  # zero-width space: deleted by the tokenizer, not a separator
        ("Hello [CLS] there", "Hello [CLS] there"),  # added tokens match before normalization: verbatim
        ("hello [Cls]  there", "hello [Cls]  there"),  # ... in any letter case
        ("<MASK>", "<MASK>"),
        ("", ""),
    ],
)
def test_bert_rule_folds_only_what_the_tokenizer_ignores(text: str, key_text: str) -> None:
    assert BERT.normalize(text) == key_text


def test_verbatim_rule_changes_nothing() -> None:
    for text in (" A  b ", "ΟΔΟΣ", "[CLS]"):
        assert TextKeyRule().normalize(text) == text


def test_keys_are_sha256_of_the_normalized_text_and_survive_lone_surrogates() -> None:
    assert text_key(BERT, "  Ada  ") == text_key(BERT, "ada")
    assert text_key(BERT, "Ada") != text_key(TextKeyRule(), "Ada")
    assert len(text_key(BERT, "\ud800")) == 32


def write_tokenizer(tmp_path: Path, **changes: Any) -> Path:
    config: dict[str, Any] = {
        "added_tokens": [{"content": "[CLS]"}, {"content": "<mask>"}],
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "lowercase": True, "strip_accents": None},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
    }
    config.update(changes)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(config))
    return path


def test_a_lowercasing_bert_tokenizer_allows_folding(tmp_path: Path) -> None:
    assert text_key_rule(write_tokenizer(tmp_path)) == TextKeyRule(
        collapse_whitespace=True, lowercase=True, verbatim_if_contains=("<mask>", "[cls]")
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"normalizer": {"type": "BertNormalizer", "clean_text": True, "lowercase": False}},  # cased model
        {"normalizer": {"type": "BertNormalizer", "clean_text": True, "lowercase": True, "strip_accents": False}},
        {"normalizer": {"type": "NFKC"}},
        {"normalizer": None},
        {"pre_tokenizer": {"type": "Metaspace"}},  # sentencepiece: whitespace is part of the tokens
        {"added_tokens": [{"content": "<new line>"}]},
    ],
)
def test_any_other_tokenizer_is_keyed_verbatim(tmp_path: Path, changes: dict[str, Any]) -> None:
    assert text_key_rule(write_tokenizer(tmp_path, **changes)) == TextKeyRule()
