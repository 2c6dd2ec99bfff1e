"""The bring-your-own-key provider client against a fake provider speaking OpenAI's and a Cohere-like shape: rendering,
chunking, reading and normalizing vectors, retries honouring Retry-After, the circuit breaker, and every fault as
its documented error with the key nowhere in messages or logs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import formatdate

import numpy as np
import pytest

from adapters.providers import ProviderClient, check_template, retry_after_seconds, template_model
from domain.errors import (
    DomainError,
    EndpointRefused,
    InvalidInput,
    ProviderBadResponse,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from domain.model import ProviderConfig

KEY = "sk-test-SECRETKEY-0123456789abcdef"
BODY_SECRET = "PROVIDER-BODY-SECRET"
OPENAI = ProviderConfig(
    name="openai",
    endpoint="https://api.openai.com/v1/embeddings",
    request_template='{"model":"text-embedding-3-small","input":$TEXTS}',
    response_path="$.data[*].embedding",
)
COHERE = ProviderConfig(
    name="cohere",
    endpoint="https://api.cohere.ai/v1/embed",
    request_template='{"texts":$TEXTS,"model":"embed-english-v3.0","input_type":"search_document"}',
    response_path="$.embeddings",
)
SINGLE = ProviderConfig(
    name="single",
    endpoint="https://embed.example.com/one",
    request_template='{"model":"one-at-a-time","input":"query: $TEXT"}',
    response_path="$.data[*].embedding",
)
AWKWARD = [
    'she said "hi"',
    "back\\slash and a \\n that is not a newline",
    "line one\nline two\ttab\r\n",
    "Été à Paris — 東京 😀 \u2028\u2029",
    "$TEXT and $TEXTS are just words here",
    "{not json}",
    "",
]


def vector_of(text: str, dimension: int = 4) -> list[float]:
    """The fake provider's deterministic, not normalized vector of a text."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    return [float(byte + 1) for byte in digest[:dimension]]


def unit(rows: list[list[float]]) -> np.ndarray:
    array = np.array(rows, dtype=np.float64)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_answer(document: object, status: int = 200) -> Answer:
    return Answer(status, json.dumps(document).encode(), {"content-type": "application/json"})


@dataclass
class Call:
    url: str
    body: object
    headers: dict[str, str]


class FakeProvider:
    """A provider speaking OpenAI's shape (`input` -> `data[*].embedding`) or a Cohere-like one (`texts` ->
    `embeddings`), answering scripted faults (an Answer, or an exception to raise) before its normal answers."""

    def __init__(self, shape: str = "openai", script: list[Answer | Exception] | None = None, dimension: int = 4):
        self.shape, self.script, self.dimension = shape, list(script or []), dimension
        self.calls: list[Call] = []
        self.gate: asyncio.Event | None = None  # when set: every call waits for it
        self.yields = False  # when true: every call lets other tasks run before it answers
        self.active = self.peak = 0

    async def post_json(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        request = json.loads(body)
        self.calls.append(Call(url, request, dict(headers)))
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.yields:
                await asyncio.sleep(0)
            if self.script:
                step = self.script.pop(0)
                if isinstance(step, Exception):
                    raise step
                return step
            return self.answer(request)
        finally:
            self.active -= 1

    def answer(self, request: object) -> Answer:
        assert isinstance(request, dict)
        if self.shape == "cohere":
            vectors = [vector_of(text, self.dimension) for text in request["texts"]]
            return json_answer({"id": BODY_SECRET, "embeddings": vectors, "meta": {"api_version": {"version": "1"}}})
        inputs = request["input"] if isinstance(request["input"], list) else [request["input"]]
        data = [
            {"object": "embedding", "index": i, "embedding": vector_of(text, self.dimension)}
            for i, text in enumerate(inputs)
        ]
        return json_answer({"object": "list", "data": data, "model": request.get("model"), "note": BODY_SECRET})


class Sleeps:
    """An injected sleep that records the waits and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def assert_secret_free(exc: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    shown = [str(exc), repr(exc), caplog.text]
    if isinstance(exc, DomainError):
        shown += [exc.message, repr(exc.details)]
    for text in shown:
        assert KEY not in text
        assert "SECRETKEY" not in text
        assert BODY_SECRET not in text


def test_openai_shape_embeds_a_batch_in_one_call() -> None:
    provider = FakeProvider("openai")
    texts = ["Ada Lovelace", "Grace Hopper", "Alan Turing"]
    vectors = asyncio.run(ProviderClient(provider).embed(OPENAI, KEY, texts))
    assert len(provider.calls) == 1
    call = provider.calls[0]
    assert call.url == OPENAI.endpoint
    assert call.body == {"model": "text-embedding-3-small", "input": texts}
    assert call.headers["Authorization"] == f"Bearer {KEY}"
    assert call.headers["Content-Type"] == "application/json"
    assert vectors.dtype == np.float32 and vectors.shape == (3, 4)
    np.testing.assert_allclose(vectors, unit([vector_of(t) for t in texts]), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("path", ["$.embeddings", "$.embeddings[*]"])
def test_cohere_like_shape_reads_a_list_of_vectors(path: str) -> None:
    provider = FakeProvider("cohere", dimension=6)
    config = ProviderConfig(COHERE.name, COHERE.endpoint, COHERE.request_template, path)
    texts = ["first", "second"]
    vectors = asyncio.run(ProviderClient(provider).embed(config, KEY, texts))
    assert provider.calls[0].body == {"texts": texts, "model": "embed-english-v3.0", "input_type": "search_document"}
    np.testing.assert_allclose(vectors, unit([vector_of(t, 6) for t in texts]), rtol=1e-6)


def test_one_text_is_read_from_a_list_holding_one_vector() -> None:
    provider = FakeProvider("cohere")
    config = ProviderConfig(COHERE.name, COHERE.endpoint, COHERE.request_template, "$.embeddings")
    vectors = asyncio.run(ProviderClient(provider).embed(config, KEY, ["only"]))
    np.testing.assert_allclose(vectors, unit([vector_of("only")]), rtol=1e-6)


def test_text_template_makes_one_call_per_text_in_order() -> None:
    provider = FakeProvider("openai")
    texts = ["one", "two", "three"]
    vectors = asyncio.run(ProviderClient(provider).embed(SINGLE, KEY, texts))
    assert [call.body for call in provider.calls] == [
        {"model": "one-at-a-time", "input": f"query: {text}"} for text in texts
    ]
    np.testing.assert_allclose(vectors, unit([vector_of(f"query: {t}") for t in texts]), rtol=1e-6)


@pytest.mark.parametrize("concurrency", [1, 4])
def test_batches_are_chunked_at_max_batch_keeping_order(concurrency: int) -> None:
    provider = FakeProvider("openai")
    texts = [f"text {i}" for i in range(5)]
    client = ProviderClient(provider, max_batch=2, concurrency=concurrency)
    vectors = asyncio.run(client.embed(OPENAI, KEY, texts))
    assert sorted(len(call.body["input"]) for call in provider.calls) == [1, 2, 2]  # type: ignore[index]
    assert sorted(t for call in provider.calls for t in call.body["input"]) == texts  # type: ignore[index]
    np.testing.assert_allclose(vectors, unit([vector_of(t) for t in texts]), rtol=1e-6)


def test_calls_of_one_request_run_at_most_concurrency_at_once() -> None:
    async def scenario() -> tuple[FakeProvider, np.ndarray]:
        provider = FakeProvider("openai")
        provider.gate = asyncio.Event()
        client = ProviderClient(provider, concurrency=3)
        task = asyncio.ensure_future(client.embed(SINGLE, KEY, [str(i) for i in range(10)]))
        for _ in range(5):
            await asyncio.sleep(0)
        assert provider.active == 3
        provider.gate.set()
        return provider, await task

    provider, vectors = asyncio.run(scenario())
    assert provider.peak == 3 and len(provider.calls) == 10 and vectors.shape == (10, 4)
    np.testing.assert_allclose(vectors, unit([vector_of(f"query: {i}") for i in range(10)]), rtol=1e-6)


@pytest.mark.parametrize("config", [OPENAI, SINGLE], ids=["texts", "text"])
def test_awkward_texts_reach_the_provider_as_valid_json_unchanged(config: ProviderConfig) -> None:
    provider = FakeProvider("openai")
    texts = [*AWKWARD, "lone surrogate \ud800"]
    vectors = asyncio.run(ProviderClient(provider).embed(config, KEY, texts))
    if config is OPENAI:
        assert provider.calls[0].body["input"] == texts  # type: ignore[index]
    else:
        assert [call.body["input"] for call in provider.calls] == [f"query: {t}" for t in texts]  # type: ignore[index]
    assert vectors.shape == (len(texts), 4)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([[3, 4]], [[0.6, 0.8]]),
        ([[0.6, 0.8]], [[0.6, 0.8]]),
        ([[1e300, -1e300]], [[2**-0.5, -(2**-0.5)]]),
        ([[5e-324, 0.0]], [[1.0, 0.0]]),
        ([[1e39, 1e39]], [[2**-0.5, 2**-0.5]]),  # beyond float32, fine once normalized
    ],
)
def test_vectors_are_l2_normalized(rows: list[list[float]], expected: list[list[float]]) -> None:
    provider = FakeProvider(script=[json_answer({"data": [{"embedding": row} for row in rows]})])
    vectors = asyncio.run(ProviderClient(provider).embed(OPENAI, KEY, ["x"] * len(rows)))
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, expected, rtol=1e-6)


def test_no_texts_make_no_call() -> None:
    provider = FakeProvider()
    assert asyncio.run(ProviderClient(provider).embed(OPENAI, KEY, [])).shape == (0, 0)
    assert provider.calls == []


def test_timeouts_on_every_attempt_are_a_provider_timeout(caplog: pytest.LogCaptureFixture) -> None:
    provider = FakeProvider(script=[ProviderTimeout(30.0) for _ in range(3)])
    sleeps = Sleeps()
    with caplog.at_level(logging.DEBUG), pytest.raises(ProviderTimeout) as raised:
        asyncio.run(ProviderClient(provider, sleep=sleeps).embed(OPENAI, KEY, ["a"]))
    assert len(provider.calls) == 3
    assert sleeps.waits == [0.5, 1.0]
    assert_secret_free(raised.value, caplog)


def test_server_errors_on_every_attempt_are_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    provider = FakeProvider(script=[json_answer({"error": BODY_SECRET}, status=500) for _ in range(3)])
    sleeps = Sleeps()
    with caplog.at_level(logging.DEBUG), pytest.raises(ProviderUnavailable) as raised:
        asyncio.run(ProviderClient(provider, sleep=sleeps).embed(OPENAI, KEY, ["a"]))
    assert len(provider.calls) == 3
    assert sleeps.waits == [0.5, 1.0]
    assert "HTTP 500" in raised.value.message and raised.value.retry_after_s == 5
    assert "api.openai.com" in caplog.text and "500" in caplog.text
    assert_secret_free(raised.value, caplog)


def test_backoff_doubles_up_to_its_cap() -> None:
    provider = FakeProvider(script=[Answer(503) for _ in range(6)])
    sleeps = Sleeps()
    client = ProviderClient(provider, max_attempts=6, base_backoff_s=1.0, max_backoff_s=5.0, sleep=sleeps)
    with pytest.raises(ProviderUnavailable):
        asyncio.run(client.embed(OPENAI, KEY, ["a"]))
    assert sleeps.waits == [1.0, 2.0, 4.0, 5.0, 5.0]


@pytest.mark.parametrize(
    "fault",
    [Answer(429, headers={"retry-after": "2"}), Answer(503, headers={"retry-after": "2"}), Answer(408)],
    ids=["429", "503", "408"],
)
def test_retryable_answer_then_success_honours_retry_after(fault: Answer) -> None:
    provider = FakeProvider(script=[fault])
    sleeps = Sleeps()
    vectors = asyncio.run(ProviderClient(provider, sleep=sleeps).embed(OPENAI, KEY, ["a"]))
    assert len(provider.calls) == 2 and vectors.shape == (1, 4)
    assert sleeps.waits == ([2.0] if "retry-after" in fault.headers else [0.5])


def test_connection_error_then_success_is_retried() -> None:
    provider = FakeProvider(script=[ProviderUnavailable("connection refused"), ProviderTimeout(5)])
    sleeps = Sleeps()
    vectors = asyncio.run(ProviderClient(provider, sleep=sleeps).embed(OPENAI, KEY, ["a"]))
    assert len(provider.calls) == 3 and sleeps.waits == [0.5, 1.0] and vectors.shape == (1, 4)


def test_retry_after_beyond_the_cap_gives_up_at_once() -> None:
    provider = FakeProvider(script=[Answer(429, headers={"retry-after": "60"})])
    sleeps = Sleeps()
    with pytest.raises(ProviderUnavailable) as raised:
        asyncio.run(ProviderClient(provider, sleep=sleeps).embed(OPENAI, KEY, ["a"]))
    assert len(provider.calls) == 1 and sleeps.waits == []
    assert raised.value.retry_after_s == 60 and "HTTP 429" in raised.value.message


def test_last_429_passes_its_retry_after_on() -> None:
    provider = FakeProvider(script=[Answer(429, headers={"Retry-After": "3"}) for _ in range(3)])
    sleeps = Sleeps()
    with pytest.raises(ProviderUnavailable) as raised:
        asyncio.run(ProviderClient(provider, sleep=sleeps).embed(OPENAI, KEY, ["a"]))
    assert raised.value.retry_after_s == 3 and sleeps.waits == [3.0, 3.0]


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = 1_700_000_000.0
    assert retry_after_seconds("2", now) == 2.0
    assert retry_after_seconds(" 1.5 ", now) == 1.5
    assert retry_after_seconds(formatdate(now + 7, usegmt=True), now) == 7.0
    assert retry_after_seconds(formatdate(now - 100, usegmt=True), now) == 0.0
    assert retry_after_seconds("9" * 400, now) == 86_400.0
    assert retry_after_seconds(None, now) is None
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds("-5", now) is None


@pytest.mark.parametrize(
    "body",
    [
        b"<html>502 Bad Gateway</html>",
        b"",
        b"\xff\xfe\x00garbage",
        b'{"data": [{"embedding": [0.1, NaN]}]}',
        b'{"data": [{"embedding": [0.1, Infinity]}]}',
        b'{"data": [{"embedding": [0.1, -Infinity]}]}',
        b'{"data": [{"embedding": [0.1, 1e400]}]}',
        b'{"data": [{"embedding": [0.1, ' + b"9" * 400 + b"]}]}",
        b'{"data": [{"embedding": [0.1, "0.2"]}]}',
        b'{"data": [{"embedding": [0.1, true]}]}',
        b'{"data": [{"embedding": [0.1, null]}]}',
        b'{"data": [{"embedding": [0.1, [0.2]]}]}',
        b'{"data": [{"embedding": []}]}',
        b'{"data": [{"embedding": [0, 0]}]}',
        b'{"data": [{"embedding": "0.1,0.2"}]}',
        b'{"data": [{"embedding": {"0": 0.1}}]}',
        b'{"data": []}',
        b'{"error": "' + BODY_SECRET.encode() + b'"}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=lambda body: body[:40].decode("latin-1"),
)
def test_unusable_answers_are_bad_responses_not_retried(body: bytes, caplog: pytest.LogCaptureFixture) -> None:
    provider = FakeProvider(script=[Answer(200, body)])
    with caplog.at_level(logging.DEBUG), pytest.raises(ProviderBadResponse) as raised:
        asyncio.run(ProviderClient(provider).embed(OPENAI, KEY, ["a"]))
    assert len(provider.calls) == 1
    assert_secret_free(raised.value, caplog)


@pytest.mark.parametrize(
    "data",
    [
        [[0.1, 0.2], [0.1, 0.2, 0.3]],  # wrong dimension
        [[0.1, 0.2]],  # too few
        [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]],  # too many
    ],
)
def test_wrong_dimensions_or_counts_are_bad_responses(data: list[list[float]]) -> None:
    provider = FakeProvider(script=[json_answer({"data": [{"embedding": row} for row in data]})])
    with pytest.raises(ProviderBadResponse):
        asyncio.run(ProviderClient(provider).embed(OPENAI, KEY, ["a", "b"]))


def test_dimensions_must_agree_across_the_calls_of_one_request() -> None:
    provider = FakeProvider(script=[json_answer({"data": [{"embedding": [0.1, 0.2]}]})])  # then 4-d answers
    with pytest.raises(ProviderBadResponse, match="dimensions"):
        asyncio.run(ProviderClient(provider, max_batch=1, concurrency=1).embed(OPENAI, KEY, ["a", "b"]))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_client_errors_are_rejected_with_their_status_not_retried(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    provider = FakeProvider(script=[json_answer({"error": {"message": f"bad key {KEY} {BODY_SECRET}"}}, status)])
    sleeps = Sleeps()
    with caplog.at_level(logging.DEBUG), pytest.raises(ProviderRejected) as raised:
        asyncio.run(ProviderClient(provider, sleep=sleeps).embed(OPENAI, KEY, ["a"]))
    assert raised.value.status == status and raised.value.details == {"provider_status": status}
    assert len(provider.calls) == 1 and sleeps.waits == []
    assert_secret_free(raised.value, caplog)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_rejected_never_followed(status: int) -> None:
    provider = FakeProvider(script=[Answer(status, headers={"location": "http://169.254.169.254/"})])
    with pytest.raises(ProviderRejected) as raised:
        asyncio.run(ProviderClient(provider).embed(OPENAI, KEY, ["a"]))
    assert raised.value.status == status and len(provider.calls) == 1


def test_refused_endpoint_passes_through_without_retry() -> None:
    provider = FakeProvider(script=[EndpointRefused("private-address", "resolves to 10.0.0.1")])
    with pytest.raises(EndpointRefused):
        asyncio.run(ProviderClient(provider).embed(OPENAI, KEY, ["a"]))
    assert len(provider.calls) == 1


def test_one_failing_call_fails_the_request_and_cancels_the_others() -> None:
    async def scenario() -> FakeProvider:
        provider = FakeProvider(script=[Answer(401)])
        provider.yields = True
        client = ProviderClient(provider, concurrency=2)
        with pytest.raises(ProviderRejected):
            await client.embed(SINGLE, KEY, [str(i) for i in range(6)])
        return provider

    provider = asyncio.run(scenario())
    assert len(provider.calls) < 6


@pytest.mark.parametrize("key", ["", "sk-with space", "sk-line\r\nX-Injected: 1", "sk-é"])
def test_keys_a_header_cannot_carry_are_refused_unechoed(key: str) -> None:
    provider = FakeProvider()
    with pytest.raises(InvalidInput) as raised:
        asyncio.run(ProviderClient(provider).embed(OPENAI, key, ["a"]))
    assert provider.calls == []
    if key:
        assert key not in str(raised.value)


@pytest.mark.parametrize(
    "endpoint",
    [
        f"https://user:{KEY}@embed.example.com/v1?key={KEY}",
        f"https://embed.example.com?key={KEY}#{BODY_SECRET}",
        f"https://embed.example.com:8443?key=a@{KEY}",
    ],
)
def test_the_key_appears_in_no_message_or_log_line(endpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    leaky = ProviderConfig("leaky", endpoint, OPENAI.request_template, OPENAI.response_path)
    faults: list[Answer | Exception] = [
        ProviderTimeout(30),
        ProviderUnavailable("connection reset"),
        Answer(500, BODY_SECRET.encode()),
        Answer(429, KEY.encode(), {"retry-after": "1"}),
        Answer(401, KEY.encode()),
        Answer(200, f'{{"data": [{{"embedding": ["{KEY}"]}}]}}'.encode()),
        Answer(200, f"not json {KEY}".encode()),
    ]
    with caplog.at_level(logging.DEBUG):
        for fault in faults:
            provider = FakeProvider(script=[fault, fault, fault])
            client = ProviderClient(provider, sleep=Sleeps(), breaker_failures=2)
            for _ in range(2):
                with pytest.raises(DomainError) as raised:
                    asyncio.run(client.embed(leaky, KEY, ["a"]))
                assert_secret_free(raised.value, caplog)
    assert "embed.example.com" in caplog.text


def test_breaker_opens_after_consecutive_failures_and_fails_fast() -> None:
    provider = FakeProvider(script=[Answer(500) for _ in range(3)])
    clock = Clock()
    client = ProviderClient(provider, max_attempts=1, breaker_failures=3, breaker_open_s=30, clock=clock)
    for _ in range(3):
        with pytest.raises(ProviderUnavailable, match="HTTP 500"):
            asyncio.run(client.embed(OPENAI, KEY, ["a"]))
    clock.now += 10
    with pytest.raises(ProviderUnavailable, match="circuit is open") as raised:
        asyncio.run(client.embed(OPENAI, KEY, ["a"]))
    assert len(provider.calls) == 3 and raised.value.retry_after_s == 20
    other = ProviderConfig("other", "https://api.cohere.ai/v1/embed", OPENAI.request_template, OPENAI.response_path)
    assert asyncio.run(client.embed(other, KEY, ["a"])).shape == (1, 4)  # another provider is not affected


def test_breaker_is_per_template_model() -> None:
    provider = FakeProvider(script=[Answer(500)])
    client = ProviderClient(provider, max_attempts=1, breaker_failures=1, clock=Clock())
    with pytest.raises(ProviderUnavailable):
        asyncio.run(client.embed(OPENAI, KEY, ["a"]))
    large = ProviderConfig(
        "large", OPENAI.endpoint, '{"model":"text-embedding-3-large","input":$TEXTS}', OPENAI.response_path
    )
    assert asyncio.run(client.embed(large, KEY, ["a"])).shape == (1, 4)


def test_breaker_is_per_account_key_so_one_spent_key_never_stops_another_account() -> None:
    provider = FakeProvider(script=[Answer(429)])
    client = ProviderClient(provider, max_attempts=1, breaker_failures=1, clock=Clock())
    with pytest.raises(ProviderUnavailable):
        asyncio.run(client.embed(OPENAI, KEY, ["a"]))  # this key's quota is spent: its circuit opens
    with pytest.raises(ProviderUnavailable, match="circuit is open"):
        asyncio.run(client.embed(OPENAI, KEY, ["a"]))
    assert asyncio.run(client.embed(OPENAI, KEY + "-another-account", ["a"])).shape == (1, 4)


def test_breaker_opens_within_the_retries_of_one_request() -> None:
    provider = FakeProvider(script=[Answer(503) for _ in range(5)])
    sleeps = Sleeps()
    client = ProviderClient(provider, max_attempts=3, breaker_failures=2, sleep=sleeps, clock=Clock())
    with pytest.raises(ProviderUnavailable, match="circuit is open"):
        asyncio.run(client.embed(OPENAI, KEY, ["a"]))
    assert len(provider.calls) == 2


def test_breaker_half_opens_after_the_window_for_one_trial() -> None:
    provider = FakeProvider(script=[Answer(500), Answer(500), Answer(502)])
    clock = Clock()
    client = ProviderClient(provider, max_attempts=1, breaker_failures=2, breaker_open_s=30, clock=clock)
    for _ in range(2):
        with pytest.raises(ProviderUnavailable, match="HTTP 500"):
            asyncio.run(client.embed(OPENAI, KEY, ["a"]))
    clock.now += 30
    with pytest.raises(ProviderUnavailable, match="HTTP 502"):  # the trial fails: open again for a whole window
        asyncio.run(client.embed(OPENAI, KEY, ["a"]))
    clock.now += 29
    with pytest.raises(ProviderUnavailable, match="circuit is open"):
        asyncio.run(client.embed(OPENAI, KEY, ["a"]))
    assert len(provider.calls) == 3
    clock.now += 1
    assert asyncio.run(client.embed(OPENAI, KEY, ["a"])).shape == (1, 4)  # the trial succeeds: closed
    provider.script = [Answer(500)]
    with pytest.raises(ProviderUnavailable, match="HTTP 500"):  # one failure alone does not open it again
        asyncio.run(client.embed(OPENAI, KEY, ["a"]))
    assert asyncio.run(client.embed(OPENAI, KEY, ["a"])).shape == (1, 4)


def test_half_open_lets_one_trial_through_at_a_time() -> None:
    async def scenario() -> None:
        provider = FakeProvider(script=[Answer(500)])
        clock = Clock()
        client = ProviderClient(provider, max_attempts=1, breaker_failures=1, breaker_open_s=30, clock=clock)
        with pytest.raises(ProviderUnavailable):
            await client.embed(OPENAI, KEY, ["a"])
        clock.now += 30
        provider.gate = asyncio.Event()
        trial = asyncio.ensure_future(client.embed(OPENAI, KEY, ["a"]))
        await asyncio.sleep(0)
        with pytest.raises(ProviderUnavailable, match="trial call"):
            await client.embed(OPENAI, KEY, ["b"])
        provider.gate.set()
        assert (await trial).shape == (1, 4)
        assert (await client.embed(OPENAI, KEY, ["b"])).shape == (1, 4)

    asyncio.run(scenario())


def test_a_cancelled_trial_lets_the_next_call_try() -> None:
    async def scenario() -> None:
        provider = FakeProvider(script=[Answer(500)])
        clock = Clock()
        client = ProviderClient(provider, max_attempts=1, breaker_failures=1, breaker_open_s=30, clock=clock)
        with pytest.raises(ProviderUnavailable):
            await client.embed(OPENAI, KEY, ["a"])
        clock.now += 30
        provider.gate = asyncio.Event()
        trial = asyncio.ensure_future(client.embed(OPENAI, KEY, ["a"]))
        await asyncio.sleep(0)
        trial.cancel()
        with pytest.raises(asyncio.CancelledError):
            await trial
        provider.gate = None
        assert (await client.embed(OPENAI, KEY, ["b"])).shape == (1, 4)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "fault",
    [Answer(401), Answer(404), Answer(200, b"garbage"), EndpointRefused("scheme", "https only")],
    ids=["401", "404", "bad-response", "refused"],
)
def test_rejections_and_bad_answers_do_not_open_the_breaker(fault: Answer | Exception) -> None:
    provider = FakeProvider(script=[fault] * 5)
    client = ProviderClient(provider, max_attempts=1, breaker_failures=2, clock=Clock())
    for _ in range(5):
        with pytest.raises(DomainError) as raised:
            asyncio.run(client.embed(OPENAI, KEY, ["a"]))
        assert "circuit" not in raised.value.message
    assert len(provider.calls) == 5


def test_an_answer_resets_the_failure_count() -> None:
    provider = FakeProvider(script=[Answer(500), Answer(401), Answer(500), Answer(500)])
    client = ProviderClient(provider, max_attempts=1, breaker_failures=2, clock=Clock())
    for expected in (ProviderUnavailable, ProviderRejected, ProviderUnavailable):
        with pytest.raises(expected):
            asyncio.run(client.embed(OPENAI, KEY, ["a"]))
    with pytest.raises(ProviderUnavailable, match="HTTP 500"):  # the second 500 in a row opens it
        asyncio.run(client.embed(OPENAI, KEY, ["a"]))
    with pytest.raises(ProviderUnavailable, match="circuit is open"):
        asyncio.run(client.embed(OPENAI, KEY, ["a"]))


@pytest.mark.parametrize(
    ("template", "path"),
    [
        ('{"model":"text-embedding-3-small","input":$TEXTS}', "$.data[*].embedding"),
        ('{"texts": $TEXTS, "model": "embed-english-v3.0"}', "$.embeddings"),
        ('{"texts":$TEXTS,"model":"embed-english-v3.0"}', "$.embeddings[*]"),
        ('{"input": "$TEXT", "model": "m"}', "$.embedding"),
        ('{"instances": [{"content": "passage: $TEXT"}]}', "$.predictions[0].embeddings.values"),
        ("$TEXTS", "$[*]"),
        ('{"a": {"b": [$TEXTS]}}', "$.vectors[*].values"),
        ('{"input": $TEXTS}', "$['data'][0].embedding"),
    ],
)
def test_valid_templates_pass_the_check(template: str, path: str) -> None:
    check_template(template, path)


@pytest.mark.parametrize(
    ("template", "path", "message"),
    [
        ('{"model": "m"}', "$.data[*].embedding", "must hold"),
        ('{"input": "$TEXT", "more": $TEXTS}', "$.data[*].embedding", "both"),
        ('{"input": $TEXT}', "$.data[*].embedding", "inside a JSON string"),
        ('{"input": "$TEXTS"}', "$.data[*].embedding", "JSON value"),
        ('{"input": ["$TEXTS"]}', "$.data[*].embedding", "JSON value"),
        ('{"input": $TEXTS,}', "$.data[*].embedding", "not valid JSON"),
        ('{"input": $TEXTS, "x": NaN}', "$.data[*].embedding", "not valid JSON"),
        ("{'input': $TEXTS}", "$.data[*].embedding", "not valid JSON"),
        ('{"$TEXT": 1}', "$.data[*].embedding", None),  # a key is a JSON string too: allowed
        ('{"input": $TEXTS}', "$.data[*", "JSONPath"),
        ('{"input": $TEXTS}', "", "JSONPath"),
        ('{"input": $TEXTS}', "data[?(", "JSONPath"),
        # whose cost on a large answer a caller could choose: filters, regexes, arithmetic, unions, descent
        ('{"input": $TEXTS}', "$.vectors[?(@.ok == true)].values", "plain JSONPath"),
        ('{"input": $TEXTS}', "$.a.`sub(/(a+)+$/, b)`", "plain JSONPath"),
        ('{"input": $TEXTS}', "$.a * $.b", "plain JSONPath"),
        ('{"input": $TEXTS}', "$.data[*].embedding | $.x", "plain JSONPath"),
        ('{"input": $TEXTS}', "$" + "..a" * 300, "plain JSONPath"),
        ('{"input": $TEXTS, "bad": "\ud800"}', "$.data", "UTF-8"),
    ],
)
def test_invalid_templates_and_paths_are_refused(template: str, path: str, message: str | None) -> None:
    if message is None:
        check_template(template, path)
        return
    with pytest.raises(InvalidInput, match=message):
        check_template(template, path)


@pytest.mark.parametrize(
    ("template", "model"),
    [
        (OPENAI.request_template, "text-embedding-3-small"),
        (COHERE.request_template, "embed-english-v3.0"),
        ('{"input": "$TEXT"}', None),
        ('{"input": "$TEXT", "model": 3}', None),
        ('{"input": "$TEXT", "model": "$TEXT"}', None),
        ('{"input": $TEXT, "model": "m"}', None),
        ('{"params": {"model": "nested"}, "input": $TEXTS}', None),
        ("no placeholder", None),
    ],
)
def test_template_model_names_the_top_level_model(template: str, model: str | None) -> None:
    assert template_model(template) == model
