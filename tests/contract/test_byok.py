"""Bring-your-own-key providers through HTTP, end to end: the in-process service (hosted mode, SQLite in tmp_path, the
fake embedder) calls a fake provider over real TLS on 127.0.0.1 (a CA made here with trustme, the host allowed as a
private host, reached only through a test resolver). Provider CRUD and encryption at rest, the SSRF rules, routing
by tier, request shapes and chunking, cache scoping, faults, quotas and usage, and key rotation."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.fernet import Fernet
from dependency_injector import providers
from fastapi.testclient import TestClient
from pydantic import ValidationError

import adapters.outbound
from adapters.outbound import OutboundClient
from adapters.providers import ProviderClient, RemoteProviders
from adapters.secrets import FernetSecretBox
from domain.model import Tier
from entrypoints import cli
from entrypoints.http.app import create_app
from entrypoints.settings import SQLITE_FILE
from tests.contract.test_accounts_api import SECRET, bearer, hosted_settings, login, signup
from tests.support import ENCRYPTION_KEY, TLSServer, fake_settings, tls_server, wait_ready

HOST = "provider.test"  # reserved TLD: it resolves only through the test resolver
DIMENSION = 8
PROVIDER_KEY = "sk-test-PROVIDERSECRET-0123456789-Zq9w"
OTHER_KEY = "sk-test-ANOTHERSECRET-9876543210-Xy7v"
OPENAI_TEMPLATE = '{"model": "text-embedding-3-small", "input": $TEXTS}'
OPENAI_PATH = "$.data[*].embedding"
COHERE_TEMPLATE = '{"texts": $TEXTS, "model": "embed-english-v3.0"}'
COHERE_PATH = "$.embeddings"
SINGLE_TEMPLATE = '{"model": "one-at-a-time", "input": "$TEXT"}'
IDENTITY = re.compile(re.escape(HOST) + r"/text-embedding-3-small#[0-9a-f]{12}")


def raw_vector(text: str, dimension: int = DIMENSION) -> list[float]:
    """The fake provider's vector for `text`: deterministic, not of unit length (the service normalizes it)."""
    digest = hashlib.sha256(text.encode()).digest()
    return [(byte - 127.5) / 10 for byte in digest[:dimension]]


def provider_vector(text: str) -> np.ndarray:
    v = np.array(raw_vector(text), dtype=np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


def close(got: Any, expected: np.ndarray) -> bool:
    return np.asarray(got, dtype=np.float32).shape == expected.shape and bool(np.allclose(got, expected, atol=1e-6))


def from_provider(vectors: list[Any], texts: list[str]) -> bool:
    """Whether `vectors` are the fake provider's vectors of `texts`, normalized, in order."""
    return len(vectors) == len(texts) and all(close(v, provider_vector(t)) for v, t in zip(vectors, texts, strict=True))


@dataclass
class Answer:
    """What the fake provider answers to one request: `body` None computes the vectors of the request's texts (in
    OpenAI's shape, or the Cohere-like one on /cohere); "$AUTH" in a body is replaced by the Authorization header
    received, as a provider echoing the key in its errors would."""

    status: int = 200
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    ragged: bool = False  # vectors of len(text) dimensions


@dataclass
class FakeProvider:
    port: int
    ca_file: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    plan: deque[Answer] = field(default_factory=deque)
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str = "/v1/embeddings") -> str:
        return f"https://{HOST}:{self.port}{path}"

    def bodies(self) -> list[Any]:
        return [json.loads(request["body"]) for request in self.requests]


def _texts_of(document: Any) -> list[str]:
    texts = document.get("input", document.get("texts"))
    return [texts] if isinstance(texts, str) else list(texts)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: TLSServer

    def setup(self) -> None:
        self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        provider = self.server.provider
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {name.lower(): value for name, value in self.headers.items()}
        provider.requests.append({"path": self.path, "headers": headers, "body": body})
        answer = provider.plan.popleft() if provider.plan else Answer()
        if answer.delay_s:
            provider.release.wait(answer.delay_s)
        payload = answer.body
        if payload is None:
            texts = _texts_of(json.loads(body))
            vectors = [raw_vector(t, len(t) if answer.ragged else DIMENSION) for t in texts]
            document: Any = (
                {"embeddings": vectors}
                if self.path.startswith("/cohere")
                else {"object": "list", "data": [{"embedding": v, "index": i} for i, v in enumerate(vectors)]}
            )
            payload = json.dumps(document).encode()
        payload = payload.replace(b"$AUTH", self.headers.get("authorization", "").encode())
        self.send_response(answer.status)
        for name, value in {"content-type": "application/json", **answer.headers}.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@contextmanager
def fake_provider(tmp_path: Path) -> Iterator[FakeProvider]:
    """A TLS server on 127.0.0.1 whose certificate for provider.test comes from a CA made here."""
    with tls_server(tmp_path, _Handler, (HOST,), lambda port, ca: FakeProvider(port=port, ca_file=ca)) as provider:
        yield provider


Answers = list[str] | Callable[[], list[str]]


def resolver_for(extra: dict[str, Answers] | None = None, calls: list[str] | None = None) -> Any:
    table: dict[str, Answers] = {HOST: ["127.0.0.1"], "evil.test": ["10.0.0.1"], **(extra or {})}

    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        answers = table.get(host)
        if answers is None:
            raise OSError(f"the test resolver does not know {host}")
        return answers() if callable(answers) else list(answers)

    return resolve


@contextmanager
def service(
    tmp_path: Path,
    provider: FakeProvider | None,
    resolver: Any = None,
    client_options: dict[str, Any] | None = None,
    **overrides: Any,
) -> Iterator[TestClient]:
    """The hosted service, free tier on the caller's provider, provider.test allowed as a private host; with
    `provider`, its provider client trusts the fake's CA, resolves through the test resolver and backs off briefly."""
    values: dict[str, Any] = {
        "free_tier_compute": "byok",
        "byok_allowed_hosts": "api.openai.com,evil.test",
        "byok_allow_private_hosts": HOST,
        "provider_timeout_seconds": 0.5,
        "provider_connect_timeout_seconds": 2.0,
    }
    app = create_app(hosted_settings(tmp_path, **{**values, **overrides}))
    container = app.state.container
    if provider is not None:
        resolver = resolver or resolver_for()
        policy = replace(container.outbound(), ca_file=provider.ca_file)
        options = {"max_batch": container.config.provider_max_batch(), "base_backoff_s": 0.01, **(client_options or {})}
        provider_client = ProviderClient(OutboundClient(policy, resolver=resolver), **options)
        container.remote.override(providers.Object(RemoteProviders(policy, provider_client, resolver=resolver)))
    with TestClient(app) as client:
        wait_ready(client)
        yield client


def register(
    client: TestClient,
    credential: str,
    provider: FakeProvider,
    *,
    template: str = OPENAI_TEMPLATE,
    path: str = OPENAI_PATH,
    endpoint_path: str = "/v1/embeddings",
    api_key: str = PROVIDER_KEY,
    name: str = "openai",
) -> str:
    body = {
        "name": name,
        "endpoint": provider.url(endpoint_path),
        "api_key": api_key,
        "request_template": template,
        "response_path": path,
    }
    response = client.post("/v1/provider", json=body, headers=bearer(credential))
    assert response.status_code == 201, response.text
    assert set(response.json()) == {"provider_id"}
    provider_id: str = response.json()["provider_id"]
    assert provider_id.startswith("prov_")
    return provider_id


def unordered(bodies: list[dict[str, Any]]) -> list[str]:
    """Request bodies as comparable strings, leaving out the order of the calls ($TEXT calls run concurrently) and of
    the texts within each (the service sends the texts it lacks in an order of its own)."""
    return sorted(
        json.dumps({k: sorted(v) if isinstance(v, list) else v for k, v in body.items()}, sort_keys=True)
        for body in bodies
    )


def make_paid(client: TestClient, email: str) -> None:
    client.app.state.container.set_tier().execute(email, Tier.PAID)  # type: ignore[attr-defined]


def local_vector(client: TestClient, text: str) -> np.ndarray:
    vector: np.ndarray = client.app.state.container.host().embedder().embed([text])[0]  # type: ignore[attr-defined]
    return vector


def stored_keys(tmp_path: Path) -> list[bytes]:
    with closing(sqlite3.connect(tmp_path / "data" / SQLITE_FILE)) as db:
        return [bytes(row[0]) for row in db.execute("SELECT encrypted_key FROM embedding_providers")]


def assert_no_key(*texts: str) -> None:
    for text in texts:
        assert PROVIDER_KEY not in text and PROVIDER_KEY[8:] not in text
        assert OTHER_KEY not in text


# 1. Provider CRUD


def test_a_provider_is_registered_shown_without_its_key_replaced_and_deleted(tmp_path: Path) -> None:
    with fake_provider(tmp_path) as provider, service(tmp_path, provider) as client:
        key = signup(client)
        token = login(client)
        assert client.get("/v1/provider", headers=bearer(key)).status_code == 404
        first = register(client, key, provider)

        shown = client.get("/v1/provider", headers=bearer(token))
        assert shown.status_code == 200
        body = shown.json()
        assert body == {
            "provider_id": first,
            "name": "openai",
            "endpoint": provider.url(),
            "request_template": OPENAI_TEMPLATE,
            "response_path": OPENAI_PATH,
            "api_key_last4": "Zq9w",
            "created_at": body["created_at"],
        }
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(\+00:00|Z)?", body["created_at"])
        assert_no_key(shown.text)
        (encrypted,) = stored_keys(tmp_path)
        assert PROVIDER_KEY.encode() not in encrypted and b"PROVIDERSECRET" not in encrypted
        assert FernetSecretBox(ENCRYPTION_KEY).decrypt(encrypted) == PROVIDER_KEY

        second = register(client, token, provider, template=COHERE_TEMPLATE, path=COHERE_PATH, api_key=OTHER_KEY)
        assert second != first
        replaced = client.get("/v1/provider", headers=bearer(key)).json()
        assert (replaced["provider_id"], replaced["request_template"], replaced["api_key_last4"]) == (
            second,
            COHERE_TEMPLATE,
            "Xy7v",
        )
        (encrypted,) = stored_keys(tmp_path)  # replaced, not added
        assert FernetSecretBox(ENCRYPTION_KEY).decrypt(encrypted) == OTHER_KEY

        grace = signup(client, "grace@example.com")
        assert client.get("/v1/provider", headers=bearer(grace)).status_code == 404  # another account's is not shown
        assert client.delete("/v1/provider", headers=bearer(grace)).status_code == 404
        assert client.get("/v1/provider").status_code == 401

        deleted = client.delete("/v1/provider", headers=bearer(token))
        assert (deleted.status_code, deleted.json()) == (200, {"deleted": True})
        gone = client.get("/v1/provider", headers=bearer(key))
        assert gone.status_code == 404 and gone.json()["error"]["type"] == "not_found"
        assert client.delete("/v1/provider", headers=bearer(key)).status_code == 404
        assert stored_keys(tmp_path) == []
        assert provider.requests == []  # registering calls nothing


def test_a_refused_provider_body_never_echoes_the_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with fake_provider(tmp_path) as provider, service(tmp_path, provider) as client:
        key = bearer(signup(client))
        good = {
            "name": "openai",
            "endpoint": provider.url(),
            "api_key": PROVIDER_KEY,
            "request_template": OPENAI_TEMPLATE,
            "response_path": OPENAI_PATH,
        }
        answers = [
            client.post("/v1/provider", json={**good, "name": "x" * 101}, headers=key),
            client.post("/v1/provider", json={**good, "api_key": PROVIDER_KEY + "\x07"}, headers=key),
            client.post("/v1/provider", json={**good, "request_template": '{"input": "$TEXTS"}'}, headers=key),
            client.post("/v1/provider", json={**good, "response_path": "$.[[["}, headers=key),
            client.post("/v1/provider", json={**good, "api_key": 12345}, headers=key),
        ]
        assert [(a.status_code, a.json()["error"]["type"]) for a in answers] == [
            (422, "invalid_request"),
            (400, "invalid_input"),
            (400, "invalid_input"),
            (400, "invalid_input"),
            (422, "invalid_request"),
        ]
        assert_no_key(*(a.text for a in answers), caplog.text)
        assert client.get("/v1/provider", headers=key).status_code == 404


# 2. SSRF


SSRF_TABLE = [
    ("http://provider.test/v1/embeddings", "https_only"),
    ("https://127.1/", "ip_literal"),
    ("https://2130706433/", "ip_literal"),
    ("https://0177.0.0.1/", "ip_literal"),
    ("https://0x7f.1/", "ip_literal"),
    ("https://[::1]/", "ip_literal"),
    ("https://[::ffff:10.0.0.1]/", "ip_literal"),
    ("https://169.254.169.254/latest/meta-data/", "ip_literal"),
    ("https://evil.test/v1/embeddings", "private_address"),  # allowed, not private: resolves to 10.0.0.1
    ("https://mixed.test/v1/embeddings", "private_address"),  # one public and one private address
    ("https://not-allowed.example/v1/embeddings", "host_not_allowed"),
    ("https://user:pass@provider.test/v1/embeddings", "userinfo"),
]


def test_ssrf_attempts_are_refused_at_registration_naming_the_rule(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    resolver = resolver_for({"mixed.test": ["93.184.216.34", "10.0.0.1"]})
    with (
        fake_provider(tmp_path) as provider,
        service(
            tmp_path, provider, resolver=resolver, byok_allowed_hosts="api.openai.com,evil.test,mixed.test"
        ) as client,
    ):
        key = bearer(signup(client))
        refused: dict[str, Any] = {}
        for endpoint, _ in SSRF_TABLE:
            body = {
                "name": "x",
                "endpoint": endpoint,
                "api_key": PROVIDER_KEY,
                "request_template": OPENAI_TEMPLATE,
                "response_path": OPENAI_PATH,
            }
            answer = client.post("/v1/provider", json=body, headers=key)
            error = answer.json()["error"]
            refused[endpoint] = (answer.status_code, error["type"], error.get("rule"))
            assert f"({error.get('rule')})" in error["message"], error
            assert_no_key(answer.text)
        assert refused == {endpoint: (400, "endpoint_refused", rule) for endpoint, rule in SSRF_TABLE}
        assert client.get("/v1/provider", headers=key).status_code == 404
        assert provider.requests == []
    assert_no_key(caplog.text)


def test_a_redirect_to_a_private_address_is_not_followed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with fake_provider(tmp_path) as provider, service(tmp_path, provider) as client:
        key = signup(client)
        register(client, key, provider)
        provider.plan.append(Answer(302, b"moved $AUTH", {"location": "http://10.0.0.1/"}))

        answer = client.post("/v1/embed", json={"text": "hello"}, headers=bearer(key))

        assert answer.status_code == 502
        assert answer.json() == {
            "error": {
                "type": "provider_rejected",
                "message": answer.json()["error"]["message"],
                "provider_status": 302,
            }
        }
        assert "HTTP 302" in answer.json()["error"]["message"]
        assert len(provider.requests) == 1
        assert_no_key(answer.text, caplog.text)


def test_a_name_that_resolves_to_a_private_address_later_is_refused_at_embed_time(tmp_path: Path) -> None:
    """DNS rebinding: the host passed at registration, but the address it resolves to when called is checked again
    and nothing is connected to."""
    answers = deque([["93.184.216.34"], ["10.0.0.1"]])
    calls: list[str] = []
    resolver = resolver_for({"rebind.test": lambda: answers.popleft() if len(answers) > 1 else answers[0]}, calls)
    with (
        fake_provider(tmp_path) as provider,
        service(tmp_path, provider, resolver=resolver, byok_allowed_hosts="rebind.test") as client,
    ):
        key = bearer(signup(client))
        body = {
            "name": "x",
            "endpoint": "https://rebind.test/v1/embeddings",
            "api_key": PROVIDER_KEY,
            "request_template": OPENAI_TEMPLATE,
            "response_path": OPENAI_PATH,
        }
        assert client.post("/v1/provider", json=body, headers=key).status_code == 201

        answer = client.post("/v1/embed", json={"text": "hello"}, headers=key)

        assert answer.status_code == 400
        assert (answer.json()["error"]["type"], answer.json()["error"]["rule"]) == (
            "endpoint_refused",
            "private_address",
        )
        assert calls == ["rebind.test", "rebind.test"]
        assert provider.requests == []
        assert_no_key(answer.text)


def test_the_endpoints_path_and_query_never_reach_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)  # the service's default LOG_LEVEL
    with fake_provider(tmp_path) as provider, service(tmp_path, provider) as client:
        key = signup(client)
        register(client, key, provider, endpoint_path="/v1/embeddings?key=QUERY-SECRET-42")
        answer = client.post("/v1/embed", json={"text": "hello"}, headers=bearer(key))
        assert answer.status_code == 200
        assert provider.requests[0]["path"] == "/v1/embeddings?key=QUERY-SECRET-42"
    assert "QUERY-SECRET-42" not in caplog.text


# 3. Routing


def test_free_accounts_embed_with_their_provider_and_paid_ones_locally(tmp_path: Path) -> None:
    with fake_provider(tmp_path) as provider, service(tmp_path, provider) as client:
        ada = signup(client)
        required = client.post("/v1/embed", json={"text": "hello"}, headers=bearer(ada))
        assert required.status_code == 400
        assert required.json()["error"]["type"] == "byok_required"
        assert "POST /v1/provider" in required.json()["error"]["message"]

        register(client, ada, provider)
        first = client.post("/v1/embed", json={"text": "hello"}, headers=bearer(ada))
        assert first.status_code == 200, first.text
        assert first.headers["x-embedding-source"] == "provider"
        assert {k: v for k, v in first.json().items() if k != "embedding"} == {"cached": False, "dimensions": DIMENSION}
        assert close(first.json()["embedding"], provider_vector("hello"))
        assert len(provider.requests) == 1
        assert provider.requests[0]["headers"]["authorization"] == f"Bearer {PROVIDER_KEY}"
        assert provider.requests[0]["path"] == "/v1/embeddings"

        again = client.post("/v1/embed", json={"text": "hello"}, headers=bearer(ada))
        assert again.headers["x-embedding-source"] == "cache"
        assert again.json()["cached"] is True and close(again.json()["embedding"], provider_vector("hello"))
        assert len(provider.requests) == 1

        mixed = client.post("/v1/embed/batch", json={"texts": ["hello", "world"]}, headers=bearer(ada))
        assert mixed.headers["x-embedding-source"] == "provider"
        assert mixed.json()["cached"] == [True, False]
        assert from_provider(mixed.json()["embeddings"], ["hello", "world"])
        assert provider.bodies()[-1] == {"model": "text-embedding-3-small", "input": ["world"]}  # only the miss
        events = client.post("/embed", json={"texts": ["world"]}, headers=bearer(ada))  # the events dialect too
        assert events.status_code == 200 and events.headers["x-embedding-source"] == "cache"

        grace = signup(client, "grace@example.com")
        make_paid(client, "grace@example.com")
        local = client.post("/v1/embed", json={"text": "hello"}, headers=bearer(grace))
        assert local.status_code == 200
        assert local.headers["x-embedding-source"] == "local"
        assert close(local.json()["embedding"], local_vector(client, "hello"))
        cached = client.post("/v1/embed", json={"text": "hello"}, headers=bearer(grace))
        assert cached.headers["x-embedding-source"] == "cache"
        assert len(provider.requests) == 2


def test_the_openai_route_sends_free_accounts_to_their_provider(tmp_path: Path) -> None:
    with fake_provider(tmp_path) as provider, service(tmp_path, provider) as client:
        key = signup(client)
        register(client, key, provider)

        named = client.post(
            "/v1/embeddings", json={"input": ["one", "two"], "model": "text-embedding-3-small"}, headers=bearer(key)
        )
        assert named.status_code == 200, named.text
        assert named.headers["x-embedding-source"] == "provider"
        body = named.json()
        assert (body["object"], body["model"], [d["index"] for d in body["data"]]) == (
            "list",
            "text-embedding-3-small",
            [0, 1],
        )
        assert from_provider([d["embedding"] for d in body["data"]], ["one", "two"])

        unnamed = client.post("/v1/embeddings", json={"input": "three"}, headers=bearer(key))
        assert unnamed.status_code == 200
        assert IDENTITY.fullmatch(unnamed.json()["model"]), unnamed.json()["model"]
        assert close(unnamed.json()["data"][0]["embedding"], provider_vector("three"))

        token_ids = client.post("/v1/embeddings", json={"input": [[101, 7592, 102]]}, headers=bearer(key))
        assert token_ids.status_code == 400
        assert token_ids.json()["error"]["type"] == "invalid_request_error"
        assert token_ids.json()["error"]["param"] == "input"
        assert "token ids" in token_ids.json()["error"]["message"]
        assert len(provider.requests) == 2


def test_a_private_install_can_serve_the_free_tier_locally(tmp_path: Path) -> None:
    with fake_provider(tmp_path) as provider, service(tmp_path, provider, free_tier_compute="local") as client:
        key = signup(client)
        without = client.post("/v1/embed", json={"text": "hello"}, headers=bearer(key))
        assert without.status_code == 200
        assert without.headers["x-embedding-source"] == "local"
        assert close(without.json()["embedding"], local_vector(client, "hello"))
        register(client, key, provider)
        with_one = client.post("/v1/embed", json={"text": "other"}, headers=bearer(key))
        assert with_one.headers["x-embedding-source"] == "local"
        assert provider.requests == []


# 4. Shapes


AWKWARD = ['she said "hi"\n\ttab', "東京 😀 $TEXT and $TEXTS", "plain"]


@pytest.mark.parametrize(
    ("template", "path", "endpoint_path", "bodies"),
    [
        pytest.param(
            OPENAI_TEMPLATE,
            OPENAI_PATH,
            "/v1/embeddings",
            [{"model": "text-embedding-3-small", "input": AWKWARD}],
            id="openai",
        ),
        pytest.param(
            COHERE_TEMPLATE,
            COHERE_PATH,
            "/cohere/embed",
            [{"texts": AWKWARD, "model": "embed-english-v3.0"}],
            id="cohere",
        ),
        pytest.param(
            SINGLE_TEMPLATE,
            OPENAI_PATH,
            "/v1/embeddings",
            [{"model": "one-at-a-time", "input": text} for text in AWKWARD],
            id="one-text-per-call",
        ),
    ],
)
def test_request_shapes(
    tmp_path: Path, template: str, path: str, endpoint_path: str, bodies: list[dict[str, Any]]
) -> None:
    with fake_provider(tmp_path) as provider, service(tmp_path, provider) as client:
        key = signup(client)
        register(client, key, provider, template=template, path=path, endpoint_path=endpoint_path)

        answer = client.post("/v1/embed/batch", json={"texts": AWKWARD}, headers=bearer(key))

        assert answer.status_code == 200, answer.text
        assert answer.headers["x-embedding-source"] == "provider"
        assert from_provider(answer.json()["embeddings"], AWKWARD)
        assert unordered(provider.bodies()) == unordered(bodies)
        assert {r["path"] for r in provider.requests} == {endpoint_path}
        assert all(r["headers"]["content-type"] == "application/json" for r in provider.requests)


def test_the_stock_client_honours_ssl_cert_file_and_provider_max_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No provider client built here: the container's own, from settings; only the system resolver is replaced."""
    monkeypatch.setattr(adapters.outbound, "system_resolver", resolver_for())
    with fake_provider(tmp_path) as provider:
        monkeypatch.setenv("SSL_CERT_FILE", provider.ca_file)
        with service(tmp_path / "trusting", None, provider_max_batch=2) as client:
            key = signup(client)
            register(client, key, provider)
            texts = [f"text {i}" for i in range(5)]
            answer = client.post("/v1/embed/batch", json={"texts": texts}, headers=bearer(key))
            assert answer.status_code == 200, answer.text
            assert from_provider(answer.json()["embeddings"], texts)
            assert sorted(len(body["input"]) for body in provider.bodies()) == [1, 2, 2]
            assert sorted(t for body in provider.bodies() for t in body["input"]) == texts

        monkeypatch.delenv("SSL_CERT_FILE")
        calls = len(provider.requests)
        with service(tmp_path / "default", None) as client:
            key = signup(client)
            register(client, key, provider)
            refused = client.post("/v1/embed", json={"text": "hello"}, headers=bearer(key))
            assert refused.status_code == 502
            assert refused.json()["error"]["type"] == "provider_unavailable"
            assert "TLS certificate verification failed" in refused.json()["error"]["message"]
            assert len(provider.requests) == calls  # no request got through an unverified connection


# 5. Cache scoping


def test_provider_vectors_are_cached_per_account_and_provider_apart_from_local_ones(tmp_path: Path) -> None:
    with fake_provider(tmp_path) as provider, service(tmp_path, provider) as client:
        paid = signup(client)
        make_paid(client, "ada@example.com")
        free = signup(client, "bob@example.com")
        other = signup(client, "carol@example.com")
        register(client, free, provider)
        register(client, other, provider)

        def embed(key: str) -> tuple[str, Any]:
            answer = client.post("/v1/embed", json={"text": "shared", "public": True}, headers=bearer(key))
            assert answer.status_code == 200, answer.text
            return answer.headers["x-embedding-source"], answer.json()["embedding"]

        source, local = embed(paid)  # into the shared pool
        assert source == "local" and close(local, local_vector(client, "shared"))
        source, remote = embed(free)
        assert source == "provider" and close(remote, provider_vector("shared"))
        assert len(remote) == DIMENSION != len(local)  # another model's vector, not the shared pool's
        assert len(provider.requests) == 1

        assert embed(paid) == ("cache", local)
        assert embed(free) == ("cache", remote)
        assert len(provider.requests) == 1

        source, theirs = embed(other)  # same provider, another account: its own entries
        assert source == "provider" and close(theirs, provider_vector("shared"))
        assert len(provider.requests) == 2

        register(client, free, provider, template='{"model": "text-embedding-3-large", "input": $TEXTS}')
        assert embed(free)[0] == "provider"  # another provider identity: another set of entries
        assert len(provider.requests) == 3
        assert provider.bodies()[-1]["model"] == "text-embedding-3-large"


# 6. Faults


FAULTS = [
    pytest.param([Answer(delay_s=5.0)] * 3, 504, "provider_timeout", 3, id="read-timeout"),
    pytest.param([Answer(500, b'{"error": "down $AUTH"}')] * 3, 502, "provider_unavailable", 3, id="500"),
    pytest.param([Answer(body=b"<html>not json $AUTH</html>")], 502, "provider_bad_response", 1, id="garbage"),
    pytest.param(
        [Answer(body=b'{"data": [{"embedding": [NaN, 1.0]}, {"embedding": [1.0, 2.0]}]}')],
        502,
        "provider_bad_response",
        1,
        id="nan",
    ),
    pytest.param(
        [Answer(body=b'{"data": [{"embedding": [1e999, 1.0]}, {"embedding": [1.0, 2.0]}]}')],
        502,
        "provider_bad_response",
        1,
        id="infinity",
    ),
    pytest.param([Answer(ragged=True)], 502, "provider_bad_response", 1, id="wrong-dimension"),
    pytest.param([Answer(401, b'{"error": "bad key $AUTH"}')], 502, "provider_rejected", 1, id="401"),
]


@pytest.mark.parametrize(("plan", "status", "kind", "calls"), FAULTS)
def test_a_provider_fault_is_its_documented_error_and_nothing_is_cached(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, plan: list[Answer], status: int, kind: str, calls: int
) -> None:
    caplog.set_level(logging.DEBUG)
    texts = ["ab", "abcd"]
    with fake_provider(tmp_path) as provider, service(tmp_path, provider) as client:
        api_key = signup(client)
        register(client, api_key, provider)
        key = bearer(api_key)
        provider.plan.extend(plan)
        started = time.monotonic()

        failed = client.post("/v1/embed/batch", json={"texts": texts}, headers=key)

        elapsed = time.monotonic() - started
        assert failed.status_code == status, failed.text
        error = failed.json()["error"]
        assert error["type"] == kind
        if kind == "provider_rejected":
            assert error["provider_status"] == 401
        if kind == "provider_unavailable":
            assert int(failed.headers["retry-after"]) >= 1
        if kind == "provider_timeout":
            assert elapsed >= 3 * 0.5 and "0.5 s" in error["message"]
        assert len(provider.requests) == calls
        assert_no_key(failed.text, caplog.text)

        recovered = client.post("/v1/embed/batch", json={"texts": texts}, headers=key)
        assert recovered.status_code == 200, recovered.text
        assert recovered.headers["x-embedding-source"] == "provider"
        assert recovered.json()["cached"] == [False, False]
        assert from_provider(recovered.json()["embeddings"], texts)
        assert len(provider.requests) == calls + 1


def test_a_429_is_retried_after_its_retry_after(tmp_path: Path) -> None:
    with fake_provider(tmp_path) as provider, service(tmp_path, provider) as client:
        key = signup(client)
        register(client, key, provider)
        provider.plan.append(Answer(429, b'{"error": "slow down"}', {"retry-after": "1"}))
        started = time.monotonic()

        answer = client.post("/v1/embed", json={"text": "hello"}, headers=bearer(key))

        assert answer.status_code == 200, answer.text
        assert answer.headers["x-embedding-source"] == "provider"
        assert close(answer.json()["embedding"], provider_vector("hello"))
        assert len(provider.requests) == 2
        assert time.monotonic() - started >= 0.95


def test_a_failing_provider_opens_its_own_circuit_only(tmp_path: Path) -> None:
    options = {"max_attempts": 1, "breaker_failures": 2, "breaker_open_s": 30.0}
    with fake_provider(tmp_path) as provider, service(tmp_path, provider, client_options=options) as client:
        ada, grace = signup(client), signup(client, "grace@example.com")
        register(client, ada, provider)
        register(client, grace, provider, template='{"model": "other-model", "input": $TEXTS}')
        provider.plan.extend([Answer(503), Answer(503)])
        for text in ("a", "b"):
            assert client.post("/v1/embed", json={"text": text}, headers=bearer(ada)).status_code == 502
        assert len(provider.requests) == 2

        open_circuit = client.post("/v1/embed", json={"text": "c"}, headers=bearer(ada))
        assert open_circuit.status_code == 502
        assert open_circuit.json()["error"]["type"] == "provider_unavailable"
        assert 1 <= int(open_circuit.headers["retry-after"]) <= 30
        assert len(provider.requests) == 2  # not called while its circuit is open

        other = client.post("/v1/embed", json={"text": "c"}, headers=bearer(grace))  # another provider identity
        assert other.status_code == 200 and len(provider.requests) == 3


# 7. Quotas and usage


def test_provider_requests_count_against_quotas_and_usage(tmp_path: Path) -> None:
    with fake_provider(tmp_path) as provider, service(tmp_path, provider, free_tier_daily_limit=6) as client:
        api_key = signup(client)
        register(client, api_key, provider)
        key = bearer(api_key)

        def remaining(answer: Any) -> int:
            found = re.match(r'"day";r=(\d+);', answer.headers["ratelimit"])
            assert found, answer.headers.get("ratelimit")
            return int(found.group(1))

        first = client.post("/v1/embed/batch", json={"texts": ["a", "b", "c"]}, headers=key)
        assert (first.status_code, remaining(first)) == (200, 3)
        provider.plan.extend([Answer(500)] * 3)
        failed = client.post("/v1/embed/batch", json={"texts": ["d", "e"]}, headers=key)
        assert (failed.status_code, remaining(failed)) == (502, 3)  # its texts given back
        hit = client.post("/v1/embed", json={"text": "a"}, headers=key)
        assert (hit.status_code, hit.headers["x-embedding-source"], remaining(hit)) == (200, "cache", 2)
        last = client.post("/v1/embed/batch", json={"texts": ["d", "e"]}, headers=key)
        assert (last.status_code, remaining(last)) == (200, 0)
        calls = len(provider.requests)
        over = client.post("/v1/embed", json={"text": "f"}, headers=key)
        assert over.status_code == 429 and over.json()["error"]["window"] == "day"
        assert len(provider.requests) == calls

        usage = client.get("/v1/usage?days=1", headers=key)
        assert usage.status_code == 200
        (row,) = usage.json()["usage"]
        assert IDENTITY.fullmatch(row["model"]), row["model"]
        assert (row["requests"], row["texts"], row["cache_hits"], row["cache_misses"], row["tokens"]) == (
            3,
            6,
            1,
            5,
            0,
        )
        assert row["compute_ms"] > 0


# 8. Encryption keys


def test_rotate_keys_re_encrypts_under_the_new_key(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    assert cli.main(["keygen", "--fernet"]) == 0
    new = capsys.readouterr().out.strip()
    Fernet(new.encode())  # a valid Fernet key
    old = ENCRYPTION_KEY
    with fake_provider(tmp_path) as provider:
        with service(tmp_path, provider, encryption_key=old) as client:
            key = signup(client)
            register(client, key, provider)
        (before,) = stored_keys(tmp_path)

        monkeypatch.chdir(tmp_path)  # no .env file read
        for name, value in {
            "HOSTED": "true",
            "JWT_SECRET": SECRET,
            "ENCRYPTION_KEY": f"{new},{old}",
            "DATA_DIR": str(tmp_path / "data"),
            "EMBEDDER_BACKEND": "fake",
        }.items():
            monkeypatch.setenv(name, value)
        assert cli.main(["providers", "rotate-keys"]) == 0
        assert "re-encrypted 1 provider keys" in capsys.readouterr().out

        (after,) = stored_keys(tmp_path)
        assert after != before
        assert FernetSecretBox(new).decrypt(after) == PROVIDER_KEY
        with pytest.raises(ValueError, match="cannot be decrypted"):
            FernetSecretBox(old).decrypt(after)

        with service(tmp_path, provider, encryption_key=new) as client:
            answer = client.post("/v1/embed", json={"text": "hello"}, headers=bearer(key))
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-embedding-source"] == "provider"
            assert provider.requests[-1]["headers"]["authorization"] == f"Bearer {PROVIDER_KEY}"
            assert client.get("/v1/provider", headers=bearer(key)).json()["api_key_last4"] == "Zq9w"
    assert_no_key(caplog.text)


@pytest.mark.parametrize("encryption_key", [None, "", " , ", "not-a-fernet-key", f"{ENCRYPTION_KEY},nope"])
def test_hosted_mode_refuses_to_start_without_a_usable_encryption_key(
    tmp_path: Path, encryption_key: str | None
) -> None:
    with pytest.raises(ValidationError, match="ENCRYPTION_KEY"):
        fake_settings(hosted=True, jwt_secret=SECRET, encryption_key=encryption_key, data_dir=tmp_path)
