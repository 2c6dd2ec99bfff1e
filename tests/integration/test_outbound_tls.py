"""Outbound provider calls over real TLS on loopback: a fake provider with certificates made in the test (trustme),
allowed as a private host and trusted through ca_file or SSL_CERT_FILE, reached only through the test resolver."""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
import threading
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from adapters.outbound import OutboundClient, OutboundPolicy, OutboundResponse, Resolver
from domain.errors import ProviderBadResponse, ProviderTimeout, ProviderUnavailable
from tests.support import TLSServer, tls_server

HOST = "provider.test"  # reserved TLD: it resolves only through the test resolver


def _gzip_bomb(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"0" * (1 << 20)
    parts = [compressor.compress(zeros) for _ in range(size >> 20)]
    return b"".join(parts) + compressor.flush()


BOMB = _gzip_bomb(64 << 20)  # 64 MiB of zeros in about 64 KiB


@dataclass
class FakeProvider:
    port: int
    ca_file: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    connections: list[str] = field(default_factory=list)
    handshake_failures: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    big_stream_bytes_sent: list[int] = field(default_factory=lambda: [0])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: TLSServer

    def setup(self) -> None:
        try:
            self.request.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            self.server.provider.handshake_failures.append(type(exc).__name__)
            raise
        self.server.provider.connections.append(self.client_address[0])
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        provider = self.server.provider
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        provider.requests.append({"path": self.path, "headers": dict(self.headers.items()), "body": body})
        if self.path == "/redirect":
            self._answer(302, b"", {"location": "http://10.0.0.1/"})
        elif self.path == "/big":
            self._answer(200, b"x" * 5000)
        elif self.path == "/endless":
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            chunk = b"x" * 16384
            try:
                while provider.big_stream_bytes_sent[0] < 64 * 1024 * 1024:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    provider.big_stream_bytes_sent[0] += len(chunk)
            except OSError:
                pass
        elif self.path == "/bomb":
            self._answer(200, BOMB, {"content-encoding": "gzip"})
        elif self.path == "/gzip":
            self._answer(200, gzip.compress(b'{"ok": true}'), {"content-encoding": "gzip"})
        elif self.path == "/hang":
            provider.release.wait(10)
        else:
            answer = {"data": [{"embedding": [0.5, 0.25]}], "received": json.loads(body)}
            self._answer(200, json.dumps(answer).encode(), {"content-type": "application/json"})

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def fake_provider(tmp_path: Path, *names: str) -> Iterator[FakeProvider]:
    """A TLS server on 127.0.0.1 whose certificate, from a CA made here, is valid for `names`."""
    make = lambda port, ca: FakeProvider(port=port, ca_file=ca)  # noqa: E731
    with tls_server(tmp_path, _Handler, names or (HOST,), make) as provider:
        yield provider


def resolver_to(*answers: str, calls: list[str] | None = None) -> Resolver:
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host != HOST:
            raise OSError(f"test resolver knows only {HOST}")
        return list(answers)

    return resolve


def call(client: OutboundClient, url: str, body: bytes = b'{"input": "hi"}', **headers: str) -> OutboundResponse:
    async def scenario() -> OutboundResponse:
        try:
            return await client.post_json(url, body, headers)
        finally:
            await client.aclose()

    return asyncio.run(scenario())


def policy_for(provider: FakeProvider, **overrides: Any) -> OutboundPolicy:
    settings: dict[str, Any] = {
        "allowed_hosts": frozenset(),
        "private_hosts": frozenset({HOST}),
        "ca_file": provider.ca_file,
        "connect_timeout_s": 2.0,
        "read_timeout_s": 5.0,
    }
    return OutboundPolicy(**{**settings, **overrides})


def test_a_provider_is_called_over_verified_tls_at_the_resolved_address_once(tmp_path: Path) -> None:
    calls: list[str] = []
    with fake_provider(tmp_path) as provider:
        client = OutboundClient(policy_for(provider), resolver=resolver_to("127.0.0.1", "127.0.0.2", calls=calls))

        response = call(
            client, f"https://{HOST}:{provider.port}/v1/embeddings", authorization="Bearer sk-test", host="evil.example"
        )

    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.body) == {"data": [{"embedding": [0.5, 0.25]}], "received": {"input": "hi"}}
    assert calls == [HOST]
    assert provider.connections == ["127.0.0.1"]
    (request,) = provider.requests
    assert request["path"] == "/v1/embeddings"
    assert request["headers"]["Host"] == f"{HOST}:{provider.port}"
    assert request["headers"]["authorization"] == "Bearer sk-test"
    assert request["headers"]["content-type"] == "application/json"


def test_the_connection_goes_to_the_first_checked_address_without_a_second_lookup(tmp_path: Path) -> None:
    calls: list[str] = []
    with fake_provider(tmp_path) as provider:
        client = OutboundClient(policy_for(provider), resolver=resolver_to("127.0.0.2", "127.0.0.1", calls=calls))

        with pytest.raises(ProviderUnavailable, match="could not connect: connection refused"):
            call(client, f"https://{HOST}:{provider.port}/v1/embeddings")

    assert calls == [HOST]
    assert provider.requests == []


def test_the_ca_bundle_is_read_from_ssl_cert_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_provider(tmp_path) as provider:
        monkeypatch.setenv("SSL_CERT_FILE", provider.ca_file)
        trusting = OutboundClient(policy_for(provider, ca_file=None), resolver=resolver_to("127.0.0.1"))
        monkeypatch.delenv("SSL_CERT_FILE")
        default = OutboundClient(policy_for(provider, ca_file=None), resolver=resolver_to("127.0.0.1"))

        assert call(trusting, f"https://{HOST}:{provider.port}/").status == 200
        with pytest.raises(ProviderUnavailable, match="TLS certificate verification failed"):
            call(default, f"https://{HOST}:{provider.port}/")

    assert len(provider.requests) == 1


def test_a_certificate_for_another_name_is_refused(tmp_path: Path) -> None:
    with fake_provider(tmp_path, "other.test", "127.0.0.1") as provider:
        client = OutboundClient(policy_for(provider), resolver=resolver_to("127.0.0.1"))

        with pytest.raises(ProviderUnavailable, match=r"could not connect: TLS certificate verification failed"):
            call(client, f"https://{HOST}:{provider.port}/v1/embeddings")

    assert provider.requests == []


def test_an_allowed_ip_literal_is_called_without_resolving(tmp_path: Path) -> None:
    calls: list[str] = []
    with fake_provider(tmp_path, "127.0.0.1") as provider:
        policy = policy_for(provider, private_hosts=frozenset({"127.0.0.1"}))
        client = OutboundClient(policy, resolver=resolver_to("10.9.9.9", calls=calls))

        response = call(client, f"https://127.0.0.1:{provider.port}/v1/embeddings")

    assert response.status == 200
    assert calls == []


def test_a_redirect_is_returned_and_never_followed(tmp_path: Path) -> None:
    with fake_provider(tmp_path) as provider:
        client = OutboundClient(policy_for(provider), resolver=resolver_to("127.0.0.1"))

        response = call(client, f"https://{HOST}:{provider.port}/redirect")

    assert response.status == 302
    assert response.headers["location"] == "http://10.0.0.1/"
    assert [request["path"] for request in provider.requests] == ["/redirect"]


@pytest.mark.parametrize("path", ["/big", "/endless", "/bomb"])
def test_an_oversized_answer_is_cut_and_refused(tmp_path: Path, path: str) -> None:
    with fake_provider(tmp_path) as provider:
        limit = len(BOMB) + 1000 if path == "/bomb" else 1000
        client = OutboundClient(policy_for(provider, max_response_bytes=limit), resolver=resolver_to("127.0.0.1"))
        started = time.monotonic()
        tracemalloc.start()
        try:
            with pytest.raises(ProviderBadResponse, match=f"larger than {limit} bytes"):
                call(client, f"https://{HOST}:{provider.port}{path}")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

        assert time.monotonic() - started < 5
    assert peak < 16 << 20  # never the whole answer (64 MiB) in memory
    assert provider.big_stream_bytes_sent[0] < 64 << 20


def test_a_compressed_answer_within_the_cap_is_decoded(tmp_path: Path) -> None:
    with fake_provider(tmp_path) as provider:
        client = OutboundClient(policy_for(provider), resolver=resolver_to("127.0.0.1"))

        response = call(client, f"https://{HOST}:{provider.port}/gzip")

    assert response.body == b'{"ok": true}'
    assert provider.requests[0]["headers"]["accept-encoding"] == "identity"


def test_a_provider_that_never_answers_times_out(tmp_path: Path) -> None:
    with fake_provider(tmp_path) as provider:
        client = OutboundClient(policy_for(provider, read_timeout_s=0.5), resolver=resolver_to("127.0.0.1"))
        started = time.monotonic()

        with pytest.raises(ProviderTimeout, match=r"within 0\.5 s"):
            call(client, f"https://{HOST}:{provider.port}/hang")

        assert 0.4 < time.monotonic() - started < 2.0


def test_proxy_settings_in_the_environment_do_not_reroute_the_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    with fake_provider(tmp_path) as provider:
        client = OutboundClient(policy_for(provider), resolver=resolver_to("127.0.0.1"))

        assert call(client, f"https://{HOST}:{provider.port}/").status == 200
