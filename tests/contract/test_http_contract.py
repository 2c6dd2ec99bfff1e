"""The HTTP contract of both clients (peoplepad, events app), pinned as whole JSON bodies on the fake embedder."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from dependency_injector import providers
from fastapi.testclient import TestClient

from adapters.fake_embedder import FakeEmbedder, FakeEmbedderLoader
from domain.model import KNOWN_MODELS
from entrypoints.http.app import create_app
from entrypoints.settings import LOG_DATEFMT, LOG_FORMAT, ConfigurationError
from tests.support import API_KEY, AUTH, fake_settings, wait_ready

SPEC = KNOWN_MODELS["all-mpnet-base-v2"]


def vector(text: str) -> list[float]:
    values: list[float] = FakeEmbedder(SPEC).embed([text])[0].tolist()
    return values


def as_float32(value: Any) -> Any:
    """The JSON body with every number read back as float32: vectors travel as the shortest float32 decimals."""
    if isinstance(value, dict):
        return {key: as_float32(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_float32(item) for item in value]
    if isinstance(value, float):
        return float(np.float32(value))
    return value


@pytest.fixture()
def client() -> Iterator[TestClient]:
    app = create_app(fake_settings(max_input_length=50, max_batch_size=100))
    with TestClient(app) as test_client:
        wait_ready(test_client)
        yield test_client


def health_body(status: str, ready: bool) -> dict[str, Any]:
    """The one /health body both clients read: peoplepad's status/model/ready, the events app's model_*."""
    name = "all-mpnet-base-v2"
    body = {"status": status, "ready": ready, "model": name, "model_loaded": ready, "model_name": name}
    return body | {"models": {name: status}}  # each served model's own state (MODELS serves several)


def error(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


def test_embed_single_text(client: TestClient) -> None:
    response = client.post(
        "/embed",
        json={"input": "Ada Lovelace", "model": "all-mpnet-base-v2", "encoding_format": "float"},
        headers=AUTH,
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert as_float32(response.json()) == {
        "object": "list",
        "model": "all-mpnet-base-v2",
        "data": [{"object": "embedding", "embedding": vector("Ada Lovelace"), "index": 0}],
    }
    assert len(response.json().get("data", [{}])[0].get("embedding")) == 768


def test_embed_batch_echoes_ids_in_order(client: TestClient) -> None:
    inputs = [{"id": f"6f1c2a5e-0000-4000-8000-{i:012d}", "text": f"contact {i}"} for i in range(100)]
    response = client.post(
        "/embed/batch",
        json={"inputs": inputs, "model": "sentence-transformers/all-mpnet-base-v2", "encoding_format": "float"},
        headers=AUTH,
    )
    assert response.status_code == 200
    assert as_float32(response.json()) == {
        "object": "list",
        "model": "all-mpnet-base-v2",
        "data": [{"id": i["id"], "object": "embedding", "embedding": vector(i["text"])} for i in inputs],
    }


def test_embed_texts_dialect(client: TestClient) -> None:
    texts = ["Jazz night at the harbour", "Farmers market", "Jazz night at the harbour", ""]
    response = client.post("/embed", json={"texts": texts}, headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    elapsed = body.pop("processing_time_ms")
    assert isinstance(elapsed, float) and 0 <= elapsed < 10_000
    assert as_float32(body) == {"embeddings": [vector(t) for t in texts], "model": "all-mpnet-base-v2"}


def test_both_dialects_give_the_same_vector(client: TestClient) -> None:
    one = client.post("/embed", json={"input": "Concert in the park"}, headers=AUTH).json()
    many = client.post("/embed", json={"texts": ["Concert in the park"], "model": "all-mpnet-base-v2"}, headers=AUTH)
    assert many.json()["embeddings"] == [one["data"][0]["embedding"]]


def test_texts_dialect_limits(client: TestClient) -> None:
    too_many = client.post("/embed", json={"texts": ["event"] * 101}, headers=AUTH)
    assert (too_many.status_code, error(too_many)) == (
        413,
        {
            "type": "batch_too_large",
            "message": "batch holds 101 inputs; the limit is 100. Split it into requests of at most 100 inputs.",
            "size": 101,
            "limit": 100,
        },
    )
    empty = client.post("/embed", json={"texts": []}, headers=AUTH)
    assert (empty.status_code, error(empty)) == (
        400,
        {"type": "invalid_input", "message": "no inputs given; send at least one text."},
    )
    wrong = client.post("/embed", json={"texts": ["ok", 7]}, headers=AUTH)
    assert (wrong.status_code, error(wrong)) == (
        422,
        {
            "type": "invalid_request",
            "message": "invalid request body: body.texts.1: Input should be a valid string",
            "problems": [{"location": "body.texts.1", "message": "Input should be a valid string"}],
        },
    )
    long = client.post("/embed", json={"texts": ["ok", "x" * 51]}, headers=AUTH)
    assert (long.status_code, error(long)["type"], error(long)["length"]) == (400, "input_too_long", 51)
    neither = client.post("/embed", json={"text": "typo"}, headers=AUTH)
    assert (neither.status_code, error(neither)["problems"]) == (
        422,
        [{"location": "body.input", "message": "Field required"}],
    )


def test_health_when_ready(client: TestClient) -> None:
    response = client.get("/health")
    assert (response.status_code, response.json()) == (
        200,
        health_body("ok", ready=True),
    )


def test_metadata(client: TestClient) -> None:
    response = client.get("/metadata", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {
        "model": "all-mpnet-base-v2",
        "hub_id": "sentence-transformers/all-mpnet-base-v2",
        "dimension": 768,
        "max_seq_length": 384,
        "revision": "e8c3b32edf5434bc2275fc9bab85f82640a19130",
        "weights_sha256": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        "library": "sentence-transformers",
        "library_version": "fake",
        "device": "cpu",
        "backend": "fake",
        "precision": "fp32",
        "min_cosine_vs_torch": None,
        "max_batch_size": 100,
        "max_input_length": 50,
        "models": [
            {
                "model": "all-mpnet-base-v2",
                "hub_id": "sentence-transformers/all-mpnet-base-v2",
                "dimension": 768,
                "max_seq_length": 384,
                "revision": "e8c3b32edf5434bc2275fc9bab85f82640a19130",
                "weights_sha256": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
                "pooling": "mean",
                "prompts": {},
                "matryoshka_dimensions": [],
                "state": "ok",
                "device": "cpu",
                "backend": "fake",
                "precision": "fp32",
                "min_cosine_vs_torch": None,
            }
        ],
    }


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}, {"Authorization": f"Basic {API_KEY}"}],
)
def test_missing_or_invalid_key_is_401(client: TestClient, headers: dict[str, str]) -> None:
    for method, path, body in [
        ("post", "/embed", {"input": "x"}),
        ("post", "/embed/batch", {"inputs": []}),
        ("get", "/metadata", None),
        ("post", "/v1/embed", {"text": "x"}),
        ("post", "/v1/embed/batch", {"texts": ["x"]}),
        ("get", "/v1/stats", None),
    ]:
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json() == {
            "error": {
                "type": "unauthenticated",
                "message": "missing or invalid API key; send 'Authorization: Bearer <key>'.",
            }
        }


def test_without_a_cache_responses_carry_no_cache_headers(client: TestClient) -> None:
    for path, body in [
        ("/embed", {"input": "x"}),
        ("/embed", {"texts": ["x", "x"]}),
        ("/embed/batch", {"inputs": [{"id": "a", "text": "x"}]}),
        ("/v1/embed", {"text": "x"}),
    ]:
        for _ in range(2):
            response = client.post(path, json=body, headers=AUTH)
            assert response.status_code == 200
            assert not {"x-cache-hits", "x-cache-hit-indexes"} & set(response.headers)


def test_both_configured_keys_are_accepted() -> None:
    app = create_app(fake_settings(peoplepad_client_key="peoplepad-key", embedding_api_key="other-key"))
    with TestClient(app) as client:
        wait_ready(client)
        for key in ("peoplepad-key", "other-key"):
            assert (
                client.post("/embed", json={"input": "x"}, headers={"Authorization": f"Bearer {key}"}).status_code
                == 200
            )


def test_text_too_long_is_400_naming_the_record(client: TestClient) -> None:
    response = client.post(
        "/embed/batch", json={"inputs": [{"id": "a", "text": "ok"}, {"id": "b", "text": "x" * 51}]}, headers=AUTH
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "type": "input_too_long",
            "message": "input with id 'b' is 51 characters long; the limit is 50 characters. "
            "Shorten or split the text before sending it.",
            "id": "b",
            "length": 51,
            "limit": 50,
        }
    }
    single = client.post("/embed", json={"input": "y" * 51}, headers=AUTH)
    assert (single.status_code, error(single)["type"], error(single)["id"]) == (400, "input_too_long", None)


def test_batch_over_limit_is_413_with_guidance(client: TestClient) -> None:
    inputs = [{"id": str(i), "text": "t"} for i in range(101)]
    response = client.post("/embed/batch", json={"inputs": inputs}, headers=AUTH)
    assert response.status_code == 413
    assert response.json() == {
        "error": {
            "type": "batch_too_large",
            "message": "batch holds 101 inputs; the limit is 100. Split it into requests of at most 100 inputs.",
            "size": 101,
            "limit": 100,
        }
    }


PAYLOAD_TOO_LARGE = {
    "error": {
        "type": "payload_too_large",
        "message": "request body exceeds 1048576 bytes; send fewer or shorter inputs per request.",
        "limit_bytes": 1048576,
    }
}


def test_body_over_1mb_is_413_by_content_length(client: TestClient) -> None:
    response = client.post(
        "/embed",
        content=b'{"input": "' + b"x" * 1_048_576 + b'"}',
        headers={**AUTH, "content-type": "application/json"},
    )
    assert (response.status_code, response.json()) == (413, PAYLOAD_TOO_LARGE)


def test_body_over_1mb_is_413_on_bytes_read_without_content_length(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"input": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    response = client.post("/embed", content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert (response.status_code, response.json()) == (413, PAYLOAD_TOO_LARGE)


def test_lying_content_length_does_not_bypass_the_cap() -> None:
    import asyncio

    from entrypoints.http.middleware import BodySizeLimit

    reached: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(True)

    sent: list[dict[str, Any]] = []
    chunks = [
        {"type": "http.request", "body": b"x" * 600, "more_body": True},
        {"type": "http.request", "body": b"x" * 600, "more_body": False},
    ]

    async def receive() -> dict[str, Any]:
        return chunks.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/embed", "headers": [(b"content-length", b"10")]}
    asyncio.run(BodySizeLimit(app, max_bytes=1000)(scope, receive, send))
    assert reached == []
    assert sent[0]["status"] == 413


def test_unknown_model_is_400_naming_the_served_model(client: TestClient) -> None:
    response = client.post("/embed", json={"input": "x", "model": "all-MiniLM-L6-v2"}, headers=AUTH)
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "type": "unknown_model",
            "message": "model 'all-MiniLM-L6-v2' is not served here; this service serves 'all-mpnet-base-v2' "
            "(accepted names: all-mpnet-base-v2, sentence-transformers/all-mpnet-base-v2).",
            "served_model": "all-mpnet-base-v2",
            "served_models": ["all-mpnet-base-v2"],
        }
    }


def test_encoding_format_other_than_float_is_400(client: TestClient) -> None:
    response = client.post("/embed", json={"input": "x", "encoding_format": "base64"}, headers=AUTH)
    assert (response.status_code, response.json()) == (
        400,
        {
            "error": {
                "type": "unsupported_encoding_format",
                "message": "encoding_format 'base64' is not supported; use 'float'.",
            }
        },
    )


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": [{"text": "no id"}]},
        {"inputs": [{"id": "", "text": "x"}]},
        {"texts": "wrong shape"},
        {"inputs": [{"id": "a"}]},
    ],
)
def test_malformed_batch_is_422_with_a_json_message(client: TestClient, body: dict[str, Any]) -> None:
    response = client.post("/embed/batch", json=body, headers=AUTH)
    assert response.status_code == 422
    assert error(response)["type"] == "invalid_request"
    assert error(response)["message"].startswith("invalid request body: body.inputs")


def test_empty_and_duplicate_batches_are_400(client: TestClient) -> None:
    empty = client.post("/embed/batch", json={"inputs": []}, headers=AUTH)
    assert (empty.status_code, error(empty)["type"]) == (400, "invalid_input")
    dup = client.post(
        "/embed/batch", json={"inputs": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}, headers=AUTH
    )
    assert (dup.status_code, dup.json()) == (
        400,
        {"error": {"type": "invalid_input", "message": "ids must be unique within a batch."}},
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "unexpected character, expected a string key"),
        (b'{"input": "caf\xe9"}', "str is not valid UTF-8"),  # latin-1, not UTF-8
        (b'{"input": "a \\ud800 b"}', "no low surrogate in string"),
        (b'{"texts": ["ok", "\\udc00"]}', "invalid high surrogate in string"),
        (b'{"texts": [NaN]}', "unexpected character, expected a JSON value"),
    ],
)
def test_malformed_json_is_422_invalid_request_naming_the_reason(client: TestClient, body: bytes, reason: str) -> None:
    response = client.post("/embed", content=body, headers={**AUTH, "content-type": "application/json"})
    assert (response.status_code, error(response)["type"]) == (422, "invalid_request")
    assert error(response)["message"].startswith("invalid request body: body.")
    assert f"JSON decode error: {reason}" in error(response)["message"]


@pytest.mark.parametrize("path", ["/embed", "/embed/batch", "/v1/embed", "/v1/embed/batch"])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}])
def test_a_caller_without_a_valid_key_gets_401_whatever_the_body(
    client: TestClient, path: str, headers: dict[str, str]
) -> None:
    for body in (b"{not json", b'{"input": "a \\ud800 b"}', b"[1, 2]"):
        response = client.post(path, content=body, headers={**headers, "content-type": "application/json"})
        assert (response.status_code, error(response)["type"]) == (401, "unauthenticated")


def test_escaped_surrogate_pairs_and_a_byte_order_mark_are_valid_json(client: TestClient) -> None:
    pair = client.post(
        "/embed", content=b'{"input": "\\ud83d\\ude00"}', headers={**AUTH, "content-type": "application/json"}
    )
    assert pair.status_code == 200
    assert (
        pair.json()["data"][0]["embedding"]
        == client.post("/embed", json={"input": "😀"}, headers=AUTH).json()["data"][0]["embedding"]
    )
    bom = client.post(
        "/embed", content=b'\xef\xbb\xbf{"input": "x"}', headers={**AUTH, "content-type": "application/json"}
    )
    assert bom.status_code == 200


def test_unknown_route_is_json_404(client: TestClient) -> None:
    response = client.get("/embeddings")
    assert (response.status_code, response.json()) == (404, {"error": {"type": "not_found", "message": "Not Found"}})


def test_timeout_is_504_and_frees_the_model() -> None:
    app = create_app(fake_settings(timeout_seconds=0.3, micro_batch_size=1))
    app.state.container.loader.override(providers.Object(FakeEmbedderLoader(SPEC, delay_per_text_s=0.1)))
    with TestClient(app) as client:
        wait_ready(client)
        slow = client.post(
            "/embed/batch", json={"inputs": [{"id": str(i), "text": f"t{i}"} for i in range(30)]}, headers=AUTH
        )
        assert (slow.status_code, slow.json()) == (
            504,
            {
                "error": {
                    "type": "timeout",
                    "message": "embedding did not finish within 0.3 s; send fewer or shorter inputs.",
                }
            },
        )
        assert client.post("/embed", json={"input": "quick"}, headers=AUTH).status_code == 200


def test_503_not_ready_while_the_model_loads() -> None:
    app = create_app(fake_settings())
    app.state.container.loader.override(providers.Object(FakeEmbedderLoader(SPEC, load_delay_s=1.0)))
    with TestClient(app) as client:
        health = client.get("/health")
        assert (health.status_code, health.json()) == (
            503,
            health_body("loading", ready=False),
        )
        embed = client.post("/embed", json={"input": "x"}, headers=AUTH)
        assert embed.status_code == 503
        assert embed.headers["retry-after"] == "5"
        assert error(embed) == {
            "type": "model_not_ready",
            "message": "model 'all-mpnet-base-v2' is still loading; retry shortly.",
        }
        assert wait_ready(client)["ready"] is True


def test_failed_model_load_keeps_health_503() -> None:
    app = create_app(fake_settings())
    app.state.container.loader.override(providers.Object(FakeEmbedderLoader(SPEC, fail=True)))
    with TestClient(app) as client:
        for _ in range(100):
            health = client.get("/health")
            if health.json()["status"] != "loading":
                break
        assert (health.status_code, health.json()) == (
            503,
            health_body("error", ready=False),
        )


def test_unexpected_errors_are_generic_500s(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(fake_settings())
    app.state.container.limits.override(providers.Object(None))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        with caplog.at_level(logging.INFO, logger="entrypoints.http.access"):
            response = client.post("/embed", json={"input": "x"}, headers=AUTH)
        assert (response.status_code, response.json()) == (
            500,
            {"error": {"type": "internal_error", "message": "internal server error"}},
        )
    access = [r.getMessage() for r in caplog.records if r.name == "entrypoints.http.access"]
    assert len(access) == 1 and access[0].startswith("POST /embed 500 ")


def test_refuses_to_start_without_keys_unless_allowed() -> None:
    with pytest.raises(ConfigurationError, match="PEOPLEPAD_CLIENT_KEY or EMBEDDING_API_KEY"):
        create_app(fake_settings(embedding_api_key=None))
    app = create_app(fake_settings(embedding_api_key=None, allow_unauthenticated=True))
    with TestClient(app) as client:
        wait_ready(client)
        assert client.post("/embed", json={"input": "x"}).status_code == 200


def test_openapi_paths_snapshot(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {path: sorted(ops) for path, ops in spec["paths"].items()} == {
        "/embed": ["post"],
        "/embed/batch": ["post"],
        "/health": ["get"],
        "/metadata": ["get"],
        "/v1/embed": ["post"],
        "/v1/embed/batch": ["post"],
        "/v1/embeddings": ["post"],
        "/v1/health": ["get"],
        "/v1/models": ["get"],
        "/v1/models/{model}": ["get"],
        "/v1/stats": ["get"],
        "/v1/usage": ["get"],
    }
    schemas = spec["components"]["schemas"]
    assert schemas["V1EmbedRequest"]["required"] == ["text"]
    assert schemas["V1EmbedResponse"]["required"] == ["embedding", "cached", "dimensions"]
    assert schemas["V1EmbedBatchRequest"]["required"] == ["texts"]
    assert schemas["V1EmbedBatchResponse"]["required"] == ["embeddings", "cached", "dimensions"]
    assert schemas["CacheStatsResponse"]["required"] == [
        "tenant",
        "cache",
        "hits",
        "misses",
        "entries",
        "cache_hits",
        "cache_misses",
        "total_cached",
    ]
    assert spec["components"]["schemas"]["EmbedBatchRequest"]["required"] == ["inputs"]
    assert spec["components"]["schemas"]["BatchInput"]["required"] == ["id", "text"]
    assert spec["components"]["schemas"]["EmbedTextsRequest"]["required"] == ["texts"]
    assert spec["components"]["schemas"]["EmbedTextsResponse"]["required"] == [
        "embeddings",
        "model",
        "processing_time_ms",
    ]
    assert spec["components"]["schemas"]["HealthResponse"]["required"] == [
        "status",
        "ready",
        "model",
        "model_loaded",
        "model_name",
        "models",
    ]
    dialects = spec["paths"]["/embed"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert dialects == [
        {"$ref": "#/components/schemas/EmbedRequest"},
        {"$ref": "#/components/schemas/EmbedTextsRequest"},
    ]


def test_the_openapi_document_states_the_limits_the_service_enforces(client: TestClient) -> None:
    """What the domain refuses with its own 400/413 is in the schema (the fixture serves MAX_BATCH_SIZE=100 and
    MAX_INPUT_LENGTH=50), so a body that follows the document is never refused for its shape."""
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for name, field in [
        ("EmbedTextsRequest", "texts"),
        ("EmbedBatchRequest", "inputs"),
        ("V1EmbedBatchRequest", "texts"),
    ]:
        assert (schemas[name]["properties"][field]["minItems"], schemas[name]["properties"][field]["maxItems"]) == (
            1,
            100,
        )
    for name, field in [("EmbedRequest", "input"), ("BatchInput", "text"), ("V1EmbedRequest", "text")]:
        assert schemas[name]["properties"][field]["maxLength"] == 50
    for name in ("EmbedTextsRequest", "V1EmbedBatchRequest"):
        assert schemas[name]["properties"]["texts"]["items"]["maxLength"] == 50
    for name in ("EmbedRequest", "EmbedTextsRequest", "EmbedBatchRequest", "V1EmbedRequest", "V1EmbedBatchRequest"):
        assert schemas[name]["properties"]["model"]["minLength"] == 1
    for name in ("EmbedRequest", "EmbedTextsRequest", "EmbedBatchRequest", "V1EmbedRequest", "V1EmbedBatchRequest"):
        assert schemas[name]["properties"]["encoding_format"]["enum"] == ["float"]
    for body, status in [({"texts": []}, 400), ({"texts": ["x"] * 101}, 413), ({"input": "x", "model": ""}, 400)]:
        assert client.post("/embed", json=body, headers=AUTH).status_code == status
    # the served models' names and sizes, and (the models loaded) the token ids they take
    names = ["all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2"]
    for name in ("EmbedRequest", "EmbedBatchRequest", "V1EmbedBatchRequest", "EmbeddingsRequest"):
        strings = [s for s in schemas[name]["properties"]["model"]["anyOf"] if s.get("type") == "string"]
        assert strings[0]["enum"] == names
    openai = schemas["EmbeddingsRequest"]["properties"]
    assert [s["enum"] for s in openai["dimensions"]["anyOf"] if s.get("type") == "integer"] == [[768]]
    one_text = next(s for s in openai["input"]["anyOf"] if s.get("items", {}).get("type") == "integer")
    assert (one_text["items"]["minimum"], one_text["items"]["maximum"]) == (0, 30521)  # the fake's vocabulary
    assert one_text["not"] == {"items": {"enum": [0, 101, 102]}}  # not only special ids
    assert schemas["EmbedBatchRequest"]["properties"]["inputs"]["uniqueItems"] is True


def test_a_method_a_path_does_not_answer_is_405_allowing_every_method_it_does(client: TestClient) -> None:
    response = client.request("DELETE", "/v1/embeddings", headers=AUTH)
    assert (response.status_code, response.headers["allow"]) == (405, "POST")
    models = client.request("POST", "/v1/models", headers=AUTH)
    assert (models.status_code, models.headers["allow"]) == (405, "GET")


def test_a_body_in_both_dialects_is_refused(client: TestClient) -> None:
    response = client.post("/embed", json={"input": "one", "texts": ["two"]}, headers=AUTH)
    assert (response.status_code, error(response)) == (
        422,
        {
            "type": "invalid_request",
            "message": "invalid request body: body: Value error, send either `input` (one text, peoplepad) or "
            "`texts` (a list, events app), not both",
            "problems": [
                {
                    "location": "body",
                    "message": "Value error, send either `input` (one text, peoplepad) or `texts` (a list, events "
                    "app), not both",
                }
            ],
        },
    )


@pytest.mark.parametrize(
    ("path", "body"),
    [("/embed", {"texts": ["x"]}), ("/v1/embed", {"text": "x"}), ("/v1/embed/batch", {"texts": ["x"]})],
)
def test_every_dialect_checks_its_encoding_format(client: TestClient, path: str, body: dict[str, Any]) -> None:
    response = client.post(path, json={**body, "encoding_format": "base64"}, headers=AUTH)
    assert (response.status_code, error(response)["type"]) == (400, "unsupported_encoding_format")
    assert client.post(path, json={**body, "encoding_format": "float"}, headers=AUTH).status_code == 200


def test_validation_locations_keep_field_names_and_a_non_json_body_is_explained(client: TestClient) -> None:
    missing = client.post("/v1/embed/batch", json={"model": "x"}, headers=AUTH)
    assert error(missing)["problems"] == [{"location": "body.texts", "message": "Field required"}]
    wrong = client.post("/v1/embed/batch", json={"texts": "not a list"}, headers=AUTH)
    assert error(wrong)["problems"][0]["location"] == "body.texts"
    form = client.post("/v1/embed", content=b"text=hello", headers={**AUTH, "content-type": "text/plain"})
    assert (form.status_code, error(form)["problems"]) == (
        422,
        [{"location": "body", "message": "the body must be a JSON object, sent with 'Content-Type: application/json'"}],
    )


def test_api_docs_are_public_unless_turned_off(client: TestClient) -> None:
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert client.get(path).status_code == 200  # no key: they describe the API and hold no data
    with TestClient(create_app(fake_settings(docs_enabled=False))) as hidden:
        wait_ready(hidden)
        for path in ("/openapi.json", "/docs", "/redoc"):
            response = hidden.get(path)
            assert (response.status_code, response.json()["error"]["type"]) == (404, "not_found")


def test_a_path_cannot_forge_log_lines(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="entrypoints.http.access"):
        client.get("/x%0a2026-11-23%2022:10:00.000%20ERROR%20forged%0d%1b[31m")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "entrypoints.http.access"]
    assert line.startswith("GET /x%0a2026-11-23%2022:10:00.000%20ERROR%20forged%0d%1b[31m 404 ")
    assert not any(ch in line for ch in "\n\r\x1b")


def test_logs_use_the_agreed_format_and_never_keys_or_texts(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    assert LOG_FORMAT == "%(asctime)s.%(msecs)03d %(levelname)s %(name)s - %(message)s"
    assert LOG_DATEFMT == "%Y-%m-%d %H:%M:%S"
    secret_text = "Private note about Grace Hopper's phone number"
    with caplog.at_level(logging.DEBUG):
        client.post("/embed", json={"input": secret_text}, headers=AUTH)
        client.post("/embed/batch", json={"inputs": [{"id": "r1", "text": secret_text}]}, headers=AUTH)
        client.post("/embed", json={"input": secret_text}, headers={"Authorization": "Bearer wrong-key-xyz"})
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "POST /embed 200" in logged
    for leak in (secret_text, "Grace", API_KEY, "wrong-key-xyz"):
        assert leak not in logged
