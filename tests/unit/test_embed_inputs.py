"""EmbedInputs, the use case behind OpenAI's embeddings route: Matryoshka truncation only for a model trained for
it, no empty inputs, token ids checked against the vocabulary and cached apart from texts, tokens always counted."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

import numpy as np
import pytest

from adapters.fake_embedder import FAKE_VOCABULARY_SIZE, FakeEmbedder, FakeEmbedderLoader
from adapters.memory_cache import InMemoryEmbeddingCache, NoEmbeddingCache
from adapters.resilience import FailSafeCache
from domain.errors import InputTooLong, InvalidInput, UnknownModel, UnsupportedDimensions
from domain.model import KNOWN_MODELS, Caller, EmbedInput, Limits, ModelSpec, TextItem, TextKeyRule, TokenIds
from domain.services import ModelHost, input_key, text_key
from domain.use_cases import EmbeddingResult, EmbedInputs
from tests.support import domain_test_scheduler, pool_of

MINILM = KNOWN_MODELS["all-MiniLM-L6-v2"]
MATRYOSHKA = replace(MINILM, name="tiny-matryoshka", dimension=8, matryoshka_dimensions=(4, 2))
ACME = Caller(tenant="acme")


@dataclass
class Built:
    use_case: EmbedInputs
    host: ModelHost


def build(spec: ModelSpec = MATRYOSHKA, cache: FailSafeCache | None = None) -> Built:
    host = ModelHost(FakeEmbedderLoader(spec))
    limits = Limits(max_input_length=100, max_batch_size=10)
    cache = cache or FailSafeCache(NoEmbeddingCache())
    return Built(EmbedInputs(pool_of(host, domain_test_scheduler()), limits, cache), host)


def items(*values: EmbedInput) -> list[TextItem]:
    return [TextItem(id=None, text=value) for value in values]


def run(built: Built, *values: EmbedInput, dimensions: int | None = None) -> EmbeddingResult:
    async def scenario() -> EmbeddingResult:
        await built.host.start()
        return await built.use_case.execute(items(*values), caller=ACME, dimensions=dimensions)

    return asyncio.run(scenario())


def test_a_matryoshka_model_is_truncated_to_an_allowed_size_and_normalized_again() -> None:
    full = FakeEmbedder(MATRYOSHKA).embed(["a text"])[0]
    result = run(build(), "a text", dimensions=4)
    assert result.dimensions == 4
    vector = result.items[0].embedding
    assert vector.shape == (4,)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(vector, full[:4] / np.linalg.norm(full[:4]), rtol=1e-6)
    assert run(build(), "a text", dimensions=8).items[0].embedding.tolist() == full.tolist()


def test_a_size_the_model_was_not_trained_for_is_refused_naming_the_sizes_it_was() -> None:
    with pytest.raises(UnsupportedDimensions) as refused:
        run(build(), "a text", dimensions=3)
    assert refused.value.details == {"dimensions": 3, "supported": [2, 4, 8]}
    with pytest.raises(UnsupportedDimensions, match="only its full 384"):
        run(build(MINILM), "a text", dimensions=128)


def test_empty_inputs_and_ids_outside_the_vocabulary_are_refused_before_any_work() -> None:
    built = build()
    with pytest.raises(InvalidInput, match="input 1 is empty"):
        built.use_case.check(items("x", ""))
    with pytest.raises(InvalidInput, match="input 0 is empty"):
        built.use_case.check(items(TokenIds(())))
    with pytest.raises(InvalidInput, match=f"token id {FAKE_VOCABULARY_SIZE}"):
        run(built, TokenIds((1, FAKE_VOCABULARY_SIZE)))
    with pytest.raises(InvalidInput, match="token id -1"):
        run(built, TokenIds((-1,)))


def test_tokens_are_counted_for_every_caller() -> None:
    result = run(build(), "three little words", TokenIds((5, 6)))
    assert result.tokens == (3 + 2) + (2 + 2)


def test_token_ids_never_share_a_cache_key_with_a_text() -> None:
    rule = TextKeyRule()
    assert input_key(rule, "a") == text_key(rule, "a")
    assert input_key(rule, TokenIds((97,))) != text_key(rule, "97")
    assert input_key(rule, TokenIds((1, 2))) != input_key(rule, TokenIds((12,)))
    cache = FailSafeCache(InMemoryEmbeddingCache(max_entries=100))
    built = build(cache=cache)
    first = run(built, "7 8", TokenIds((7, 8)))
    again = run(built, TokenIds((7, 8)), "7 8")
    assert [item.cached for item in first.items] == [False, False]
    assert [item.cached for item in again.items] == [True, True]


def test_an_input_over_the_length_limit_is_named_by_its_index() -> None:
    built = build()
    with pytest.raises(InputTooLong, match="input 1 is 101 characters long; the limit is 100 characters"):
        built.use_case.check(items("ok", "x" * 101))
    with pytest.raises(InputTooLong, match="input 2 is 101 token ids long; the limit is 100 token ids"):
        built.use_case.check(items("ok", TokenIds((1,)), TokenIds(tuple(range(101)))))


def test_token_ids_holding_only_special_tokens_or_padding_are_an_empty_input() -> None:
    built = build()
    for ids in ((101, 102), (0,), (0, 0, 0), (101, 0, 102)):
        with pytest.raises(InvalidInput, match="input 1 holds only the model's special tokens or padding"):
            run(built, "fine", TokenIds(ids))
    assert run(built, TokenIds((101, 7, 102, 0))).items[0].embedding.shape == (MATRYOSHKA.dimension,)


def test_an_unknown_model_is_named_before_the_dimensions_asked_of_it() -> None:
    with pytest.raises(UnknownModel):
        build().use_case.check(items("x"), "text-embedding-3-small", dimensions=256)
