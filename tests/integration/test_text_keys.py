"""The cache-key normalization of each real model is vector-preserving: checked on every Unicode code point against
the model's own tokenizer normalizer, on generated texts against its token ids, and on generated texts against the
served vectors themselves (embed(t) == embed(key-normalized t), bit for bit)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from adapters.model_provisioning import VerifiedModelProvisioner
from adapters.sentence_transformer_loader import SentenceTransformerLoader
from adapters.tokenizer_rules import text_key_rule
from domain.model import BERT_WHITESPACE, KNOWN_MODELS, TextKeyRule
from domain.ports import Embedder
from tests.support import MODEL_ROOT, model_dir

pytestmark = pytest.mark.integration

MODELS = ["all-MiniLM-L6-v2", "all-mpnet-base-v2"]
CODE_POINTS = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]

# Pieces generated texts are made of: what could trip a key normalization up.
TRICKY = [
    *BERT_WHITESPACE,
    *"\x00\x0b\x0c\x1c\x1d\x1e\x1f\x85\u180e\u200b\u200c\u200d\u2060\ufeff\ufffd",  # deleted, not spaces
    *"\u03a3\u03c3\u03c2\u0130\u0131Ii\u1e9e\u00df\u212a\u212b\u01c4\u01c5\u01c6",  # special case maps
    *"\u0301\u0307\u0308\u0345\u0327",  # combining marks (stripped with accents)
    "[CLS]",
    "[cls]",
    "[Sep]",
    "[MASK]",
    "[UNK]",
    "[PAD]",
    "<mask>",
    "<MASK>",
    "<s>",
    "</S>",
    "<pad>",
    "<unk>",
    "Ada",
    "LOVELACE",
    "ΟΔΟΣ",
    "東京",
    "Été",
    "ǅemal",
    "word",
    " ",
    "  ",
    "\t\n",
]
texts = st.lists(
    st.one_of(st.sampled_from(TRICKY), st.text(st.characters(exclude_categories=["Cs"]), max_size=6)), max_size=12
).map("".join)


@cache
def tokenizer(name: str) -> Tokenizer:
    loaded = Tokenizer.from_file(str(model_dir(name) / "tokenizer.json"))
    loaded.no_padding()
    loaded.enable_truncation(max_length=KNOWN_MODELS[name].max_seq_length)
    return loaded


@cache
def rule(name: str) -> TextKeyRule:
    return text_key_rule(model_dir(name) / "tokenizer.json")


@pytest.mark.parametrize("name", MODELS)
def test_both_models_fold_whitespace_and_case_but_keep_their_added_tokens(name: str) -> None:
    markers = {"all-MiniLM-L6-v2": ("[cls]", "[mask]", "[pad]", "[sep]", "[unk]")}
    assert rule(name) == TextKeyRule(
        collapse_whitespace=True,
        lowercase=True,
        verbatim_if_contains=markers.get(name, ("</s>", "<mask>", "<pad>", "<s>", "<unk>", "[unk]")),
    )


@pytest.mark.parametrize("name", MODELS)
def test_every_code_point_lowercases_as_the_tokenizer_does(name: str) -> None:
    normalize = tokenizer(name).normalizer.normalize_str  # type: ignore[union-attr]
    wrong = [c for c in CODE_POINTS if normalize(c) != normalize(c.lower())]
    assert wrong == []


@pytest.mark.parametrize("name", MODELS)
def test_the_whitespace_set_is_exactly_what_the_tokenizer_turns_into_spaces(name: str) -> None:
    normalize = tokenizer(name).normalizer.normalize_str  # type: ignore[union-attr]
    spaces = {c for c in CODE_POINTS if normalize(f"a{c}b") == "a b"}
    assert spaces == set(BERT_WHITESPACE)


@pytest.mark.parametrize("name", MODELS)
def test_a_naive_normalization_would_change_tokens(name: str) -> None:
    """Why the rule is careful: str.lower() on a final capital sigma, lowercasing an added token and treating
    \\x1c as whitespace each change the token ids."""
    ids = lambda text: tokenizer(name).encode(text).ids  # noqa: E731
    assert ids("ΟΔΟΣ") != ids("ΟΔΟΣ".lower())
    assert ids("a\x1cb") != ids(" ".join("a\x1cb".split()))
    special = "[UNK] x" if name == "all-MiniLM-L6-v2" else "<mask> x"
    assert ids(special.upper()) != ids(special.upper().lower()) or ids(special) != ids(special.upper())


@pytest.mark.parametrize("name", MODELS)
@settings(max_examples=1500, deadline=None)
@given(text=texts)
def test_key_normalized_texts_have_the_same_token_ids(name: str, text: str) -> None:
    normalized = rule(name).normalize(text)
    assert tokenizer(name).encode(normalized).ids == tokenizer(name).encode(text).ids


def load(name: str, backend: str) -> Embedder:
    provisioner = VerifiedModelProvisioner(root=MODEL_ROOT, sources=[])
    loader = SentenceTransformerLoader(KNOWN_MODELS[name], provisioner, device="cpu", backend=backend)  # type: ignore[arg-type]
    return loader.load()


@pytest.fixture(
    scope="module",
    params=[("all-MiniLM-L6-v2", "onnx"), ("all-MiniLM-L6-v2", "torch"), ("all-mpnet-base-v2", "onnx")],
    ids=lambda p: "-".join(p),
)
def served(request: pytest.FixtureRequest) -> Iterator[Embedder]:
    name, backend = request.param
    model_dir(name)
    yield load(name, backend)


@settings(max_examples=60, deadline=None)
@given(text=texts)
def test_served_vectors_of_key_normalized_texts_are_identical(served: Embedder, text: str) -> None:
    normalized = served.info.text_key.normalize(text)
    assert normalized == rule(served.info.spec.name).normalize(text)
    np.testing.assert_array_equal(served.embed([normalized]), served.embed([text]))
