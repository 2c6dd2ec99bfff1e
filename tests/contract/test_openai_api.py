"""OpenAI's embeddings API on its own router: whole-JSON bodies of successes and of every error (OpenAI's envelope
and status codes on these paths only), token-id inputs, base64, the input limits, and an account's quotas, usage and
rate-limit headers applying as on the hosted routes. The fake embedder; the SDK against real weights is in
tests/integration/test_openai_sdk.py."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dependency_injector import providers
from fastapi.testclient import TestClient

from adapters.fake_embedder import FAKE_VOCABULARY_SIZE, FakeEmbedder
from domain.model import KNOWN_MODELS, TokenIds
from entrypoints.http.app import create_app
from tests.contract.test_accounts_api import bearer, hosted, signup
from tests.support import AUTH, fake_settings, wait_ready

SPEC = KNOWN_MODELS["all-mpnet-base-v2"]
FAKE = FakeEmbedder(SPEC)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(fake_settings(openai_max_inputs=4, max_body_bytes=4096))) as client:
        wait_ready(client)
        yield client


def vector(value: str | list[int]) -> list[float]:
    embedded = FAKE.embed([TokenIds(tuple(value)) if isinstance(value, list) else value])[0]
    return [float(x) for x in embedded]


def embeddings(client: TestClient, body: dict[str, Any], headers: dict[str, str] | None = AUTH) -> Any:
    return client.post("/v1/embeddings", json=body, headers=headers)


def error(message: str, kind: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def test_a_text_is_answered_in_openais_list_shape(client: TestClient) -> None:
    response = embeddings(client, {"input": "hello there world", "model": "all-mpnet-base-v2"})
    assert response.status_code == 200
    assert response.json() == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": pytest.approx(vector("hello there world"))}],
        "model": "all-mpnet-base-v2",
        "usage": {"prompt_tokens": 5, "total_tokens": 5},  # three words and the two special tokens (fake counts)
    }


def test_texts_in_order_the_model_echoed_as_named_and_left_out_it_is_the_served_one(client: TestClient) -> None:
    named = embeddings(client, {"input": ["b", "a c"], "model": SPEC.hub_id}).json()
    assert named["model"] == SPEC.hub_id
    assert [item["index"] for item in named["data"]] == [0, 1]
    assert [item["embedding"] for item in named["data"]] == [pytest.approx(vector("b")), pytest.approx(vector("a c"))]
    assert named["usage"] == {"prompt_tokens": 3 + 4, "total_tokens": 7}
    assert embeddings(client, {"input": "b"}).json()["model"] == "all-mpnet-base-v2"


def test_base64_holds_the_same_float32_vector_little_endian(client: TestClient) -> None:
    as_floats = embeddings(client, {"input": ["one", "two"]}).json()["data"]
    as_base64 = embeddings(client, {"input": ["one", "two"], "encoding_format": "base64"}).json()["data"]
    for floats, encoded in zip(as_floats, as_base64, strict=True):
        decoded = np.frombuffer(base64.b64decode(encoded["embedding"]), dtype="<f4")
        assert decoded.shape == (SPEC.dimension,)
        assert decoded.tolist() == np.asarray(floats["embedding"], dtype=np.float32).tolist()


def test_token_id_inputs_reach_the_model_as_token_ids(client: TestClient) -> None:
    one = embeddings(client, {"input": [101, 7592, 102]}).json()
    assert [item["embedding"] for item in one["data"]] == [pytest.approx(vector([101, 7592, 102]))]
    assert one["usage"]["prompt_tokens"] == 5  # the fake counts ids like words, plus its two special tokens
    several = embeddings(client, {"input": [[7, 8], [9]]}).json()
    assert [item["embedding"] for item in several["data"]] == [
        pytest.approx(vector([7, 8])),
        pytest.approx(vector([9])),
    ]
    assert vector([7, 8]) != vector("7 9")
    # a whole number written 7.0 is JSON Schema's integer too; 7.5 and true are not
    written = embeddings(client, {"input": [[7.0, 8]]}).json()
    assert written["data"][0]["embedding"] == pytest.approx(vector([7, 8]))
    for bad in ([[7.5]], [True], [[False, 8]]):
        assert embeddings(client, {"input": bad}).status_code == 400


def test_the_user_field_and_unknown_fields_are_ignored_and_the_full_dimension_is_accepted(client: TestClient) -> None:
    body = {"input": "x", "user": "user-1234", "dimensions": SPEC.dimension, "client_extension": True}
    response = embeddings(client, body)
    assert response.status_code == 200
    assert len(response.json()["data"][0]["embedding"]) == SPEC.dimension


SERVED = (
    "model 'text-embedding-3-small' is not served here; this service serves 'all-mpnet-base-v2' (accepted names: "
    "all-mpnet-base-v2, sentence-transformers/all-mpnet-base-v2)."
)


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        (
            {"input": "x", "model": "text-embedding-3-small"},
            404,
            error(SERVED, "invalid_request_error", "model", "model_not_found"),
        ),
        (
            {"input": ["fine", ""]},
            400,
            error(
                "input 1 is empty; every input must hold at least one character or token id.",
                "invalid_request_error",
                "input",
                "invalid_input",
            ),
        ),
        (
            {"input": []},
            400,
            error("no inputs given; send at least one text.", "invalid_request_error", "input", "invalid_input"),
        ),
        (
            {"input": [[1, 2], []]},
            400,
            error(
                "input 1 is empty; every input must hold at least one character or token id.",
                "invalid_request_error",
                "input",
                "invalid_input",
            ),
        ),
        (
            {"input": ["a", "b", "c", "d", "e"]},
            400,
            error(
                "batch holds 5 inputs; the limit is 4. Split it into requests of at most 4 inputs.",
                "invalid_request_error",
                "input",
                "batch_too_large",
            ),
        ),
        (
            {"input": "x", "dimensions": 256},
            400,
            error(
                "dimensions=256 is not available for model 'all-mpnet-base-v2': it was not trained for truncated "
                "vectors, so only its full 768 is served (cutting its vectors short would return worse ones).",
                "invalid_request_error",
                "dimensions",
                "unsupported_dimensions",
            ),
        ),
        (
            {"input": [5, FAKE_VOCABULARY_SIZE]},
            400,
            error(
                f"input 0 holds token id {FAKE_VOCABULARY_SIZE}, outside the served model's vocabulary (0 to "
                f"{FAKE_VOCABULARY_SIZE - 1}); send ids of this model's own tokenizer, not another's (tiktoken's).",
                "invalid_request_error",
                "input",
                "invalid_input",
            ),
        ),
        (
            {"input": [["a"]]},
            400,
            error(
                "invalid request body: body.input: input must be a string, a list of strings, a list of token ids "
                "(integers), or a list of such lists",
                "invalid_request_error",
                "input",
                "invalid_request",
            ),
        ),
        (
            {"input": [1, True]},
            400,
            error(
                "invalid request body: body.input: input must be a string, a list of strings, a list of token ids "
                "(integers), or a list of such lists",
                "invalid_request_error",
                "input",
                "invalid_request",
            ),
        ),
        (
            {"input": "x", "encoding_format": "binary"},
            400,
            error(
                "invalid request body: body.encoding_format: Input should be 'float' or 'base64'",
                "invalid_request_error",
                "encoding_format",
                "invalid_request",
            ),
        ),
        (
            {"model": "all-mpnet-base-v2"},
            400,
            error(
                "invalid request body: body.input: Field required", "invalid_request_error", "input", "invalid_request"
            ),
        ),
    ],
)
def test_refusals_use_openais_envelope_and_status_codes(
    client: TestClient, body: dict[str, Any], status: int, expected: dict[str, Any]
) -> None:
    response = embeddings(client, body)
    assert (response.status_code, response.json()) == (status, expected)


def test_authentication_body_malformed_json_and_a_body_too_large_in_openais_envelope(client: TestClient) -> None:
    missing = embeddings(client, {"input": "x"}, headers=None)
    assert (missing.status_code, missing.json()) == (
        401,
        error(
            "missing or invalid API key; send 'Authorization: Bearer <key>'.",
            "authentication_error",
            None,
            "invalid_api_key",
        ),
    )
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = embeddings(client, {"input": "x"}, headers={"Authorization": "Bearer sk-not-this-one"})
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "invalid_api_key")
    broken = client.post("/v1/embeddings", content=b'{"input": ', headers={**AUTH, "Content-Type": "application/json"})
    assert broken.status_code == 400
    assert broken.json()["error"] | {"message": None} == {
        "message": None,
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_request",
    }
    assert "JSON decode error" in broken.json()["error"]["message"]
    huge = embeddings(client, {"input": "x" * 5000})
    assert (huge.status_code, huge.json()) == (
        413,
        error(
            "request body exceeds 4096 bytes; send fewer or shorter inputs per request.",
            "invalid_request_error",
            None,
            "payload_too_large",
        ),
    )
    wrong_method = client.get("/v1/embeddings", headers=AUTH)
    assert (wrong_method.status_code, wrong_method.json()["error"]["code"]) == (405, "method_not_allowed")


def test_the_other_routes_keep_their_own_error_body(client: TestClient) -> None:
    response = client.post("/v1/embed", json={"text": "x", "model": "text-embedding-3-small"}, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "unknown_model"
    assert "code" not in response.json()["error"]


def test_models_are_listed_and_retrieved_in_openais_shape(client: TestClient) -> None:
    listed = client.get("/v1/models", headers=AUTH)
    assert listed.status_code == 200
    created = listed.json()["data"][0]["created"]
    assert isinstance(created, int)
    model = {"id": "all-mpnet-base-v2", "object": "model", "created": created, "owned_by": "embedding-service"}
    assert listed.json() == {"object": "list", "data": [model]}
    for name in ("all-mpnet-base-v2", SPEC.hub_id):
        assert client.get(f"/v1/models/{name}", headers=AUTH).json() == model
    unknown = client.get("/v1/models/text-embedding-3-small", headers=AUTH)
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "model_not_found")
    assert client.get("/v1/models").status_code == 401


def test_the_input_limit_is_bounded_by_the_queue() -> None:
    app = create_app(fake_settings(openai_max_inputs=10, max_queued_texts=3))
    with TestClient(app) as client:
        wait_ready(client)
        assert embeddings(client, {"input": ["a", "b", "c"]}).status_code == 200
        refused = embeddings(client, {"input": ["a", "b", "c", "d"]})
        assert (refused.status_code, refused.json()["error"]["code"]) == (400, "batch_too_large")
        assert "the limit is 3" in refused.json()["error"]["message"]
        documented = client.get("/openapi.json").json()["components"]["schemas"]["EmbeddingsRequest"]
        texts = next(
            s for s in documented["properties"]["input"]["anyOf"] if s.get("items", {}).get("type") == "string"
        )
        assert texts["maxItems"] == 3 and texts["items"]["minLength"] == 1


def test_an_unexpected_failure_is_a_500_in_openais_envelope() -> None:
    app = create_app(fake_settings())
    app.state.container.openai_limits.override(providers.Object(None))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        response = embeddings(client, {"input": "x"})
    assert (response.status_code, response.json()) == (
        500,
        error("internal server error", "server_error", None, "internal_error"),
    )


def test_the_cache_applies(tmp_path: Path) -> None:
    with TestClient(create_app(fake_settings(cache_backend="memory"))) as client:
        wait_ready(client)
        first = embeddings(client, {"input": ["cached text", "other"]})
        second = embeddings(client, {"input": ["new one", "cached text"]})
        assert (first.headers["X-Cache-Hits"], second.headers["X-Cache-Hits"]) == ("0", "1")
        assert second.headers["X-Cache-Hit-Indexes"] == "1"
        assert second.json()["data"][1]["embedding"] == first.json()["data"][0]["embedding"]
        assert second.json()["usage"]["prompt_tokens"] == 4 + 4  # cached texts count their tokens too


def test_an_accounts_key_is_metered_with_rate_limit_headers_usage_and_quota(tmp_path: Path) -> None:
    with hosted(tmp_path, free_tier_daily_limit=5, free_tier_per_minute=100) as client:
        key = bearer(signup(client))
        first = embeddings(client, {"input": ["one two", "three"]}, headers=key)
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-requests"] == "100"
        assert first.headers["x-ratelimit-remaining-requests"] == "99"
        assert '"day";r=3' in first.headers["RateLimit"]
        spent = embeddings(client, {"input": ["a", "b", "c", "d"]}, headers=key)
        assert spent.status_code == 429
        assert spent.json()["error"] | {"message": None} == {
            "message": None,
            "type": "rate_limit_error",
            "param": None,
            "code": "insufficient_quota",
        }
        assert int(spent.headers["Retry-After"]) > 0
        assert spent.headers["x-ratelimit-remaining-requests"] == "99"  # refused whole: nothing consumed
        usage = client.get("/v1/usage", headers=key).json()["totals"]
        assert (usage["requests"], usage["texts"], usage["tokens"]) == (1, 2, first.json()["usage"]["prompt_tokens"])


def test_the_minute_limit_is_rate_limit_exceeded(tmp_path: Path) -> None:
    with hosted(tmp_path, free_tier_per_minute=1) as client:
        key = bearer(signup(client))
        assert embeddings(client, {"input": "x"}, headers=key).status_code == 200
        limited = embeddings(client, {"input": "x"}, headers=key)
        assert (limited.status_code, limited.json()["error"]["code"]) == (429, "rate_limit_exceeded")
        assert limited.json()["error"]["type"] == "rate_limit_error"
        assert limited.headers["x-ratelimit-remaining-requests"] == "0"
        assert 0 < int(limited.headers["Retry-After"]) <= 60


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"input": "x", "model": ""}, 400, "invalid_request", "model"),
        ({"input": "x", "model": "text-embedding-3-small", "dimensions": 256}, 404, "model_not_found", "model"),
        ({"input": [101, 102]}, 400, "invalid_input", "input"),  # only [CLS] and [SEP]: an empty text
        ({"input": [[7], [0, 0]]}, 400, "invalid_input", "input"),  # only padding
    ],
)
def test_more_refusals(client: TestClient, body: dict[str, Any], status: int, code: str, param: str) -> None:
    response = embeddings(client, body)
    assert (response.status_code, response.json()["error"]["code"], response.json()["error"]["param"]) == (
        status,
        code,
        param,
    )


def test_a_trailing_slash_is_a_404_in_openais_envelope_never_a_redirect(client: TestClient) -> None:
    response = client.post(
        "/v1/embeddings/", json={"input": "x"}, headers={**AUTH, "Host": "evil.example"}, follow_redirects=False
    )
    assert response.status_code == 404
    assert "location" not in response.headers
    assert response.json()["error"] | {"message": None} == {
        "message": None,
        "type": "invalid_request_error",
        "param": None,
        "code": "not_found",
    }


def test_a_request_too_large_for_its_deadline_is_a_400_on_this_route() -> None:
    """The scheduler refuses a request that alone would outlast TIMEOUT_SECONDS (tests/unit/test_dynamic_batcher.py);
    OpenAI's route answers it 400 on `input`, which the SDK does not retry, and the other routes 413."""
    from domain.errors import RequestTooLarge
    from entrypoints.http.errors import domain_error_response

    refusal = RequestTooLarge(2048, 25.3, 10, 650)
    openai = domain_error_response(refusal, scope={"path": "/v1/embeddings"})
    assert openai.status_code == 400
    assert json_of(openai)["error"]["param"] == "input" and json_of(openai)["error"]["code"] == "request_too_large"
    assert "send at most about 650 of them per request" in json_of(openai)["error"]["message"]
    own = domain_error_response(refusal, scope={"path": "/v1/embed/batch"})
    assert own.status_code == 413 and json_of(own)["error"]["fits"] == 650


def json_of(response: Any) -> Any:
    import json

    return json.loads(response.body)


def test_a_model_trained_for_truncation_gives_normalized_vectors_of_the_size_asked(tmp_path: Path) -> None:
    from dataclasses import replace

    from adapters.fake_embedder import FakeEmbedderLoader

    matryoshka = replace(SPEC, matryoshka_dimensions=(256, 64))
    app = create_app(fake_settings())
    app.state.container.loader.override(providers.Object(FakeEmbedderLoader(matryoshka)))
    with TestClient(app) as client:
        wait_ready(client)
        full = np.asarray(embeddings(client, {"input": "a text"}).json()["data"][0]["embedding"])
        short = embeddings(client, {"input": "a text", "dimensions": 64})
        assert short.status_code == 200
        vector = np.asarray(short.json()["data"][0]["embedding"])
        assert vector.shape == (64,)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(vector, full[:64] / np.linalg.norm(full[:64]), rtol=1e-5, atol=1e-7)
        refused = embeddings(client, {"input": "a text", "dimensions": 100})
        assert (refused.status_code, refused.json()["error"]["param"]) == (400, "dimensions")
        assert "it was trained for 256, 64 (and its full 768)" in refused.json()["error"]["message"]


def test_a_failed_request_gives_the_accounts_texts_back(tmp_path: Path) -> None:
    with hosted(tmp_path, free_tier_daily_limit=5, free_tier_per_minute=50) as client:
        key = bearer(signup(client))
        client.app.state.container.host().embedder().embed = None  # type: ignore[attr-defined]  # the backend fails
        failed = embeddings(client, {"input": ["a", "b", "c"]}, headers=key)
        assert (failed.status_code, failed.json()["error"]["code"]) == (503, "backend_failure")
        assert failed.json()["error"]["type"] == "server_error"
        assert failed.headers["ratelimit"].startswith('"day";r=5;')  # given back
        assert failed.headers["x-ratelimit-remaining-requests"] == "49"  # the request still counts


def test_listing_models_counts_against_the_minute_limit(tmp_path: Path) -> None:
    with hosted(tmp_path, free_tier_per_minute=2) as client:
        key = bearer(signup(client))
        first = client.get("/v1/models", headers=key)
        assert (first.status_code, first.headers["x-ratelimit-remaining-requests"]) == (200, "1")
        assert client.get("/v1/models/all-mpnet-base-v2", headers=key).status_code == 200
        limited = client.get("/v1/models", headers=key)
        assert (limited.status_code, limited.json()["error"]["code"]) == (429, "rate_limit_exceeded")
