"""POST /v1/embeddings and GET /v1/models through the official `openai` SDK, sync and async, against real
`embedding-service serve` processes on the all-MiniLM-L6-v2 weights: base64 and float vectors (equal to the events
dialect's), token counts, token-id inputs, a 2048-input batch, typed errors (hosted quotas included), and a retry
that waits for Retry-After while the model is still being downloaded."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import openai
import pytest
from tokenizers import Tokenizer

from domain.model import KNOWN_MODELS
from tests.fake_hub import serve_fake_hub
from tests.support import API_KEY, AUTH, ENCRYPTION_KEY, MODEL_ROOT, ServerProcess, TcpProxy, model_dir

pytestmark = pytest.mark.integration

MINILM = "all-MiniLM-L6-v2"
HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
DIMENSION = 384
MAX_SEQ_LENGTH = 256
JWT_SECRET = "openai-sdk-test-jwt-secret-0123456789abcdef"
PASSWORD = "correct horse battery staple"

TEXTS = [
    "Ada Lovelace, analyst and metaphysician, London",
    "Met Grace at the compilers meetup; follow up about COBOL docs",
    "Émile Zola — écrivain, Paris 🇫🇷",
    "word " * 600,  # beyond max_seq_length: truncated at 256 tokens, not rejected
]


class Server(ServerProcess):
    def wait_ready(self, timeout_s: float = 300) -> None:  # a first start exports the ONNX graph
        super().wait_ready(timeout_s)

    def client(self, **options: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=options.pop("api_key", API_KEY), **options)


@contextmanager
def running(env: dict[str, str], cwd: Path) -> Iterator[Server]:
    server = Server(env, cwd)
    try:
        yield server
    finally:
        server.stop()


def minilm_env(**overrides: str) -> dict[str, str]:
    model_dir(MINILM)
    return {
        "EMBEDDER_BACKEND": "sentence_transformers",
        "MODEL_NAME": MINILM,
        "MODEL_PATH": str(MODEL_ROOT),
        "HF_HUB_OFFLINE": "true",
        "DEVICE": "cpu",
        **overrides,
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # 2048 texts take ~4 s here when the machine is idle, but a CI box shared with other jobs may take over 10 s
    # (TIMEOUT_SECONDS' default): these tests are about answers, not speed
    env = minilm_env(EMBEDDING_API_KEY=API_KEY, TIMEOUT_SECONDS="60")
    with running(env, tmp_path_factory.mktemp("openai-server")) as started:
        started.wait_ready()
        yield started


@pytest.fixture(scope="module")
def hosted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("openai-hosted")
    env = minilm_env(
        HOSTED="true",
        JWT_SECRET=JWT_SECRET,
        ENCRYPTION_KEY=ENCRYPTION_KEY,
        FREE_TIER_COMPUTE="local",
        DATA_DIR=str(folder / "data"),
        BCRYPT_ROUNDS="4",
        FREE_TIER_PER_MINUTE="1",
        FREE_TIER_DAILY_LIMIT="5",
    )
    with running(env, folder) as started:
        started.wait_ready()
        yield started


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """The served model's own tokenizer as the model takes texts: special tokens, truncation at 256, no padding."""
    loaded = Tokenizer.from_file(str(model_dir(MINILM) / "tokenizer.json"))
    loaded.no_padding()
    loaded.enable_truncation(MAX_SEQ_LENGTH)
    return loaded


def vectors(response: Any) -> np.ndarray:
    assert [item.index for item in response.data] == list(range(len(response.data)))
    assert all(item.object == "embedding" for item in response.data)
    return np.array([item.embedding for item in response.data], dtype=np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def token_count(tokenizer: Tokenizer, texts: list[str]) -> int:
    return sum(len(encoding.ids) for encoding in tokenizer.encode_batch(texts))


def events_vectors(server: Server, texts: list[str]) -> np.ndarray:
    response = httpx.post(f"{server.base}/embed", json={"texts": texts}, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    return np.array(response.json()["embeddings"], dtype=np.float32)


def test_sdk_default_base64_and_float_give_identical_vectors_equal_to_the_events_dialect(
    server: Server, tokenizer: Tokenizer
) -> None:
    sent: list[httpx.Request] = []
    with httpx.Client(event_hooks={"request": [sent.append]}) as http:
        client = server.client(http_client=http)
        as_base64 = client.embeddings.create(model=MINILM, input=TEXTS)
        as_float = client.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float")
    assert [json.loads(request.content)["encoding_format"] for request in sent] == ["base64", "float"]

    decoded, floats = vectors(as_base64), vectors(as_float)
    assert decoded.shape == (len(TEXTS), DIMENSION)
    assert np.array_equal(decoded, floats)  # bit for bit: base64 float32 bytes and shortest-decimal JSON numbers
    np.testing.assert_allclose(np.linalg.norm(floats, axis=1), 1.0, atol=1e-5)
    assert cosines(floats, events_vectors(server, TEXTS)).min() >= 0.99999

    expected_tokens = token_count(tokenizer, TEXTS)
    assert len(tokenizer.encode(TEXTS[-1]).ids) == MAX_SEQ_LENGTH
    for response in (as_base64, as_float):
        assert (response.object, response.model) == ("list", MINILM)
        assert (response.usage.prompt_tokens, response.usage.total_tokens) == (expected_tokens, expected_tokens)


def test_the_hub_id_is_accepted_and_echoed(server: Server) -> None:
    response = server.client().embeddings.create(model=HUB_ID, input=TEXTS[0])
    assert response.model == HUB_ID
    assert cosines(vectors(response), events_vectors(server, TEXTS[:1]))[0] >= 0.99999


def test_full_dimensions_are_accepted(server: Server) -> None:
    response = server.client().embeddings.create(model=MINILM, input=TEXTS[0], dimensions=DIMENSION, user="someone")
    assert vectors(response).shape == (1, DIMENSION)


def test_token_ids_with_or_without_special_tokens_embed_like_their_text(server: Server, tokenizer: Tokenizer) -> None:
    client = server.client()
    text, other = TEXTS[1], TEXTS[2]
    with_special = tokenizer.encode(text).ids
    without_special = tokenizer.encode(text, add_special_tokens=False).ids
    assert len(with_special) == len(without_special) + 2  # [CLS] ... [SEP]
    expected = vectors(client.embeddings.create(model=MINILM, input=[text, other]))

    for ids in (with_special, without_special):
        response = client.embeddings.create(model=MINILM, input=ids)
        assert cosines(vectors(response), expected[:1])[0] >= 0.99999
        assert response.usage.prompt_tokens == len(with_special)

    lists = [without_special, tokenizer.encode(other).ids]
    response = client.embeddings.create(model=MINILM, input=lists)
    assert cosines(vectors(response), expected).min() >= 0.99999
    assert response.usage.prompt_tokens == token_count(tokenizer, [text, other])


def test_token_ids_beyond_the_limit_are_truncated_like_their_text(server: Server, tokenizer: Tokenizer) -> None:
    client = server.client()
    long = TEXTS[-1]
    ids = tokenizer.encode(long, add_special_tokens=False).ids  # 256 ids: with [CLS] and [SEP], 2 too many
    assert len(ids) == MAX_SEQ_LENGTH
    from_ids = client.embeddings.create(model=MINILM, input=ids)
    from_text = client.embeddings.create(model=MINILM, input=long)
    assert from_ids.usage.prompt_tokens == from_text.usage.prompt_tokens == MAX_SEQ_LENGTH
    assert cosines(vectors(from_ids), vectors(from_text))[0] >= 0.99999


@pytest.mark.parametrize("where", ["past the end", "negative"])
def test_a_token_id_outside_the_vocabulary_is_a_bad_request(server: Server, tokenizer: Tokenizer, where: str) -> None:
    token = tokenizer.get_vocab_size() if where == "past the end" else -1
    with pytest.raises(openai.BadRequestError) as caught:
        server.client(max_retries=0).embeddings.create(model=MINILM, input=[[101, 2000, 102], [101, token, 102]])
    assert (caught.value.status_code, caught.value.code, caught.value.param) == (400, "invalid_input", "input")
    assert caught.value.type == "invalid_request_error"


def test_a_batch_of_2048_inputs_comes_back_complete_and_in_order(server: Server, tokenizer: Tokenizer) -> None:
    texts = [
        f"note {i}: call {['Ada', 'Grace', 'Alan', 'Edsger'][i % 4]} about item {i * 7919 % 10007}" for i in range(2048)
    ]
    client = server.client()  # the SDK's defaults: base64, 2 retries
    response = client.embeddings.create(model=MINILM, input=texts)
    batch = vectors(response)
    assert batch.shape == (2048, DIMENSION)
    assert response.usage.prompt_tokens == token_count(tokenizer, texts)
    picked = [0, 1, 1023, 2046, 2047]
    singles = np.vstack([vectors(client.embeddings.create(model=MINILM, input=texts[i])) for i in picked])
    assert cosines(batch[picked], singles).min() >= 0.99999
    assert cosines(batch[picked], np.roll(singles, 1, axis=0)).max() < 0.999  # distinct texts: order matters


def test_async_client_embeds_raises_typed_errors_and_concurrent_calls_match_sequential(server: Server) -> None:
    texts = [f"{text[:120]} #{n}" for n, text in enumerate(TEXTS * 2)]

    async def scenario() -> tuple[Any, list[Any], list[Any], openai.NotFoundError]:
        async with openai.AsyncOpenAI(base_url=f"{server.base}/v1", api_key=API_KEY, max_retries=0) as client:
            first = await client.embeddings.create(model=MINILM, input=TEXTS)
            with pytest.raises(openai.NotFoundError) as caught:
                await client.embeddings.create(model="text-embedding-3-small", input="x")
            sequential = [await client.embeddings.create(model=MINILM, input=text) for text in texts]
            together = await asyncio.gather(*(client.embeddings.create(model=MINILM, input=text) for text in texts))
        return first, sequential, list(together), caught.value

    first, sequential, together, not_found = asyncio.run(scenario())
    assert vectors(first).shape == (len(TEXTS), DIMENSION) and first.model == MINILM
    assert cosines(vectors(first), events_vectors(server, TEXTS)).min() >= 0.99999
    assert (not_found.status_code, not_found.code, not_found.param) == (404, "model_not_found", "model")
    one_by_one = np.vstack([vectors(response) for response in sequential])
    at_once = np.vstack([vectors(response) for response in together])
    assert cosines(one_by_one, at_once).min() >= 0.99999
    assert cosines(one_by_one, events_vectors(server, texts)).min() >= 0.99999


def test_a_wrong_key_is_an_authentication_error(server: Server) -> None:
    wrong = "sk-not-the-key-" + uuid.uuid4().hex
    with pytest.raises(openai.AuthenticationError) as caught:
        server.client(api_key=wrong, max_retries=0).embeddings.create(model=MINILM, input="x")
    error = caught.value
    assert (error.status_code, error.code, error.param) == (401, "invalid_api_key", None)
    assert error.type == "authentication_error" and error.response.headers["WWW-Authenticate"] == "Bearer"
    assert isinstance(error.body, dict) and set(error.body) == {"message", "type", "param", "code"}
    assert wrong not in error.response.text


def test_an_unknown_model_is_not_found(server: Server) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        server.client(max_retries=0).embeddings.create(model="text-embedding-3-small", input="x")
    error = caught.value
    assert (error.status_code, error.code, error.param) == (404, "model_not_found", "model")
    assert error.type == "invalid_request_error"
    assert error.body == error.response.json()["error"]


@pytest.mark.parametrize(
    ("arguments", "code", "param"),
    [
        ({"input": ""}, "invalid_input", "input"),
        ({"input": ["fine", ""]}, "invalid_input", "input"),
        ({"input": []}, "invalid_input", "input"),
        ({"input": [[101, 102], []]}, "invalid_input", "input"),
        ({"input": ["a"] * 2049}, "batch_too_large", "input"),
        ({"input": "x", "dimensions": 100}, "unsupported_dimensions", "dimensions"),
        ({"input": "x", "extra_body": {"input": [["a"]]}}, "invalid_request", "input"),
        ({"input": "x", "extra_body": {"input": [1.5]}}, "invalid_request", "input"),
        ({"input": "x", "extra_body": {"encoding_format": "int8"}}, "invalid_request", "encoding_format"),
    ],
    ids=[
        "empty text",
        "an empty text in a list",
        "empty list",
        "empty token list",
        "2049 inputs",
        "dimensions 100",
        "list of lists of texts",
        "float token id",
        "encoding_format int8",
    ],
)
def test_bad_requests_raise_bad_request_error(server: Server, arguments: dict[str, Any], code: str, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        server.client(max_retries=0).embeddings.create(model=MINILM, **arguments)
    error = caught.value
    assert (error.status_code, error.code, error.type, error.param) == (400, code, "invalid_request_error", param)


def test_models_list_and_retrieve(server: Server) -> None:
    client = server.client(max_retries=0)
    listed = client.models.list()
    assert [(model.id, model.object, model.owned_by) for model in listed.data] == [
        (MINILM, "model", "embedding-service")
    ]
    assert listed.data[0].created == 0  # unknown: the same from every worker and restart
    retrieved = client.models.retrieve(MINILM)
    assert (retrieved.id, retrieved.created) == (MINILM, listed.data[0].created)
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("text-embedding-3-small")
    assert (caught.value.code, caught.value.param) == ("model_not_found", "model")


def sign_up(server: Server) -> str:
    email = f"user-{uuid.uuid4().hex[:10]}@example.com"
    response = httpx.post(f"{server.base}/v1/auth/signup", json={"email": email, "password": PASSWORD}, timeout=30)
    assert response.status_code == 201, response.text
    key: str = response.json()["api_key"]
    return key


def test_hosted_per_minute_limit_is_a_rate_limit_error_with_openai_headers(hosted: Server) -> None:
    client = hosted.client(api_key=sign_up(hosted), max_retries=0)
    raw = client.embeddings.with_raw_response.create(model=MINILM, input=TEXTS[:2])
    assert vectors(raw.parse()).shape == (2, DIMENSION)
    assert raw.headers["x-ratelimit-limit-requests"] == "1"
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    assert re.fullmatch(r"\d+s", raw.headers["x-ratelimit-reset-requests"])

    refused = None
    for _ in range(3):  # the minute window is a fixed one: a request may land in the next minute
        try:
            client.embeddings.create(model=MINILM, input="again")
        except openai.RateLimitError as error:
            refused = error
            break
    assert refused is not None, hosted.log()
    assert (refused.status_code, refused.code, refused.type) == (429, "rate_limit_exceeded", "rate_limit_error")
    headers = refused.response.headers
    retry_after = int(headers["Retry-After"])
    assert 0 < retry_after <= 60
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == ("1", "0")
    assert headers["x-ratelimit-reset-requests"] == f"{retry_after}s"


def test_hosted_daily_quota_is_a_rate_limit_error_with_insufficient_quota(hosted: Server) -> None:
    client = hosted.client(api_key=sign_up(hosted), max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        client.embeddings.create(model=MINILM, input=[f"text {n}" for n in range(6)])  # daily limit: 5 texts
    error = caught.value
    assert (error.status_code, error.code, error.type) == (429, "insufficient_quota", "rate_limit_error")
    assert 0 < int(error.response.headers["Retry-After"]) <= 86400
    assert "x-ratelimit-limit-requests" in error.response.headers


def wait_answering(server: Server, timeout_s: float = 60) -> httpx.Response:
    """The first answer of /health, whatever its status."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return httpx.get(f"{server.base}/health", timeout=5)
        except httpx.TransportError:
            assert time.monotonic() < deadline and server.process.poll() is None, server.log()
            time.sleep(0.05)


def test_sdk_waits_for_retry_after_while_the_model_is_still_downloading(tmp_path: Path) -> None:
    """The server downloads the weights from a (loopback) hub whose connection is held until the SDK has seen a
    503 model_not_ready: the first answers are 503 for certain, however fast the machine loads models."""
    spec = KNOWN_MODELS[MINILM]
    with serve_fake_hub(spec.hub_id, spec.revision, model_dir(MINILM)) as hub:
        held = TcpProxy(("127.0.0.1", int(urlsplit(hub).port or 0)))
        held.blackhole()
        held.start()
        env = minilm_env(
            EMBEDDING_API_KEY=API_KEY,
            MODEL_PATH=str(tmp_path / "models"),
            HF_HUB_OFFLINE="false",
            HF_ENDPOINT=f"http://127.0.0.1:{held.port}",
            HF_HOME=str(tmp_path / "hf-home"),
            HF_HUB_ETAG_TIMEOUT="120",
            HF_HUB_DOWNLOAD_TIMEOUT="120",
            INFERENCE_BACKEND="torch",  # no ONNX export to make in the fresh folder: loads sooner
        )
        with running(env, tmp_path / "cwd") as loading:
            try:
                assert wait_answering(loading).json()["status"] == "loading"

                with pytest.raises(openai.InternalServerError) as caught:
                    loading.client(max_retries=0).embeddings.create(model=MINILM, input=TEXTS[0])
                error = caught.value
                assert (error.status_code, error.code, error.type) == (503, "model_not_ready", "server_error")
                assert error.response.headers["Retry-After"] == "5"

                sent: list[float] = []
                answered: list[tuple[float, httpx.Response]] = []

                def on_response(response: httpx.Response) -> None:
                    answered.append((time.monotonic(), response))
                    if response.status_code == 503:
                        held.resume()  # now let the download through

                hooks = {"request": [lambda _: sent.append(time.monotonic())], "response": [on_response]}
                with httpx.Client(event_hooks=hooks) as http:
                    result = loading.client(max_retries=8, http_client=http).embeddings.create(
                        model=MINILM, input=TEXTS[0]
                    )
            finally:
                held.cut()  # (before the server stops: a held download would keep it from exiting)

    assert vectors(result).shape == (1, DIMENSION)
    statuses = [response.status_code for _, response in answered]
    assert len(sent) == len(answered) and statuses[-1] == 200 and set(statuses[:-1]) == {503}, statuses
    timeline = [round(at - sent[0], 2) for at in sent]
    for (refused_at, refusal), retried_at in zip(answered[:-1], sent[1:], strict=True):
        assert refusal.headers["Retry-After"] == "5"
        assert retried_at - refused_at >= 5 - 0.5, timeline  # the SDK's own backoff would be 0.5-1 s
