"""The server's own HTTP protocol under hostile clients, over real sockets: oversized request heads, slow request
lines, headers and bodies, and requests the HTTP parser rejects all get a JSON error and a closed connection, and
the server keeps answering everyone else."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from dependency_injector import providers

from adapters.fake_embedder import FakeEmbedderLoader
from domain.model import KNOWN_MODELS
from entrypoints.http.app import create_app
from entrypoints.http.protocol import ConnectionLimits
from tests.support import API_KEY, fake_settings, run_together, uvicorn_app

LIMITS = ConnectionLimits(max_head_bytes=16384, head_timeout_s=0.5, body_timeout_s=0.5)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, int]]:
    with uvicorn_app(create_app(fake_settings()), LIMITS) as served:
        yield served


@pytest.fixture(scope="module")
def slow_server() -> Iterator[tuple[str, int]]:
    """The same limits, and a model that takes 1 s per text."""
    app = create_app(fake_settings())
    slow = FakeEmbedderLoader(KNOWN_MODELS["all-mpnet-base-v2"], delay_per_text_s=1.0)
    app.state.container.loader.override(providers.Object(slow))
    with uvicorn_app(app, LIMITS) as served:
        yield served


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def post_head(path: str, *fields: str) -> bytes:
    """A POST request line and headers, JSON content type, with `fields` ("Name: value") added."""
    lines = [f"POST {path} HTTP/1.1", "Host: x", "Content-Type: application/json", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def exchange(port: int, data: bytes) -> bytes:
    """Send `data` at once on a new connection, then read until the server closes it."""
    sock = connect(port)
    sock.sendall(data)
    raw = read_until_closed(sock)
    sock.close()
    return raw


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def parse(raw: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return status, headers, json.loads(body)


def still_serving(base: str) -> None:
    assert httpx.get(f"{base}/health").status_code == 200


def test_a_request_head_over_the_limit_is_431_json_before_it_is_all_sent(server: tuple[str, int]) -> None:
    base, port = server
    sock = connect(port)
    sent = 0
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: ")
    try:
        for _ in range(32 * 1024):  # 32 MB of one header value, unless the server stops us first
            sock.sendall(b"a" * 1024)
            sent += 1024
    except OSError:
        pass
    status, headers, body = parse(read_until_closed(sock))
    sock.close()
    assert (status, headers["content-type"], headers["connection"]) == (431, "application/json", "close")
    assert body == {
        "error": {"type": "headers_too_large", "message": "the request line and headers exceed 16384 bytes."}
    }
    assert sent < 8 * 1024 * 1024  # refused long before the 32 MB were sent
    still_serving(base)


def test_many_headers_summing_over_the_limit_are_refused_too(server: tuple[str, int]) -> None:
    base, _ = server
    headers = {f"x-h{i}": "v" * 100 for i in range(200)}  # 200 headers of ~110 bytes: over 16 KB together
    response = httpx.get(f"{base}/health", headers=headers)
    assert response.status_code == 431
    assert response.json()["error"]["type"] == "headers_too_large"


def test_a_head_just_under_the_limit_is_served(server: tuple[str, int]) -> None:
    base, _ = server
    response = httpx.get(f"{base}/health", headers={"x-padding": "p" * 15000})
    assert response.status_code == 200
    response = httpx.post(
        f"{base}/embed",
        json={"input": "x" * 5000},  # the body does not count towards the head's limit
        headers={"Authorization": f"Bearer {API_KEY}", "x-padding": "p" * 15000},
    )
    assert response.status_code == 200


PAYLOAD_TOO_LARGE = {
    "error": {
        "type": "payload_too_large",
        "message": "request body exceeds 1048576 bytes; send fewer or shorter inputs per request.",
        "limit_bytes": 1048576,
    }
}
SLOW_HEAD = "the request line and headers took over 0.5 s."
SLOW_BODY = post_head("/embed", f"Authorization: Bearer {API_KEY}", "Content-Length: 100") + b'{"input": "'


@pytest.mark.parametrize(
    ("partial", "message"),
    [
        (b"", "the request line and headers took over 0.5 s."),
        (b"GET /hea", "the request line and headers took over 0.5 s."),
        (
            b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
            "the request line and headers took over 0.5 s.",
        ),
        (SLOW_BODY, "the request body took over 0.5 s."),
    ],
    ids=["silent", "slow request line", "slow headers", "slow body"],
)
def test_a_slow_request_is_408_and_closed(server: tuple[str, int], partial: bytes, message: str) -> None:
    base, port = server
    sock = connect(port)
    started = time.monotonic()
    sock.sendall(partial)  # and nothing more
    status, _, body = parse(read_until_closed(sock))
    elapsed = time.monotonic() - started
    sock.close()
    assert status == 408
    assert body == {"error": {"type": "request_timeout", "message": message}}
    assert 0.4 < elapsed < 3
    still_serving(base)


def test_slow_clients_do_not_hold_connections(server: tuple[str, int]) -> None:
    """Six slow clients trickling a byte every 0.2 s, three in their heads and three in their bodies (heads sent at
    once): every one is cut off within its limit, with a 408."""
    base, port = server
    outcomes: list[tuple[float, bytes]] = []

    def trickle(at_once: bytes, slowly: bytes) -> None:
        sock = connect(port)
        sock.sendall(at_once)
        started = time.monotonic()
        try:
            for byte in slowly:
                sock.sendall(bytes([byte]))
                time.sleep(0.2)
        except OSError:
            pass
        outcomes.append((time.monotonic() - started, read_until_closed(sock)))
        sock.close()

    head = (b"", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    body = (b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n", b"x" * 40)
    run_together(*((trickle, *request) for request in [head] * 3 + [body] * 3), timeout_s=30)
    assert len(outcomes) == 6
    assert max(elapsed for elapsed, _ in outcomes) < 3  # 0.5 s and this machine's noise, not the trickle's 6-8 s
    messages = sorted(parse(raw)[2]["error"]["message"] for _, raw in outcomes)  # type: ignore[index]
    assert messages == sorted([SLOW_HEAD] * 3 + ["the request body took over 0.5 s."] * 3)
    still_serving(base)


def test_requests_the_parser_rejects_get_a_json_400(server: tuple[str, int]) -> None:
    base, port = server
    for raw in (
        b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: spaces\r\n\r\n",
        b"POST /embed HTTP/1.1\nHost: x\nContent-Length: 40000\n\n" + b"x" * 40000,  # bare LFs, then a long body
    ):
        status, headers, body = parse(exchange(port, raw))
        assert (status, headers["content-type"]) == (400, "application/json")
        assert body == {"error": {"type": "invalid_http", "message": "malformed HTTP/1.1 request."}}
    still_serving(base)


def test_kept_alive_connections_serve_several_requests_and_time_each_head(server: tuple[str, int]) -> None:
    _, port = server
    sock = connect(port)
    for _ in range(3):
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        response = b""
        while b'"model_name"' not in response:
            response += sock.recv(65536)
        assert response.startswith(b"HTTP/1.1 200 ")
    sock.sendall(b"GET /health HTTP/1.1\r\n")  # a fourth head that never ends
    status, _, _ = parse(read_until_closed(sock))
    sock.close()
    assert status == 408


def responses(raw: bytes) -> list[int]:
    """The status codes of every response in a stream (one may follow another's body directly)."""
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def test_a_bare_crlf_after_an_answer_does_not_hold_the_connection(server: tuple[str, int]) -> None:
    _, port = server
    sock = connect(port)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    started = time.monotonic()
    sock.sendall(b"\r\n")  # cancels uvicorn's keep-alive timer; the parser skips it, so no request begins
    status, _, _ = parse(read_until_closed(sock))
    sock.close()
    assert status == 408 and time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", [431]),
        (
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
            + b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: "
            + b"a" * 20000
            + b"\r\n\r\n",
            [200, 431],
        ),
    ],
    ids=["after leading CRLFs", "pipelined behind a small request"],
)
def test_heads_over_the_limit_that_start_mid_read_are_refused(
    server: tuple[str, int], stream: bytes, expected: list[int]
) -> None:
    _, port = server
    raw = exchange(port, stream)
    assert responses(raw) == expected
    assert b'"headers_too_large"' in raw


def test_trailers_never_become_headers(server: tuple[str, int]) -> None:
    _, port = server
    sock = connect(port)
    body = b'{"text": "trailer auth"}'
    sock.sendall(
        post_head("/v1/embed", "Transfer-Encoding: chunked")
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n"
        + f"Authorization: Bearer {API_KEY}\r\n\r\n".encode()
    )
    response = b""
    while b'"unauthenticated"' not in response and b'"embedding"' not in response:
        response += sock.recv(65536)
    sock.close()
    assert responses(response) == [401]


def test_endless_trailers_are_cut_off_at_the_raw_body_limit(server: tuple[str, int]) -> None:
    base, port = server
    sock = connect(port)
    sock.sendall(post_head("/embed", "Transfer-Encoding: chunked") + b"0\r\n")
    sent = 0
    block = (b"X-T: " + b"a" * 60000 + b"\r\n") * 16
    try:
        while sent < 64 * 1024 * 1024:
            sock.sendall(block)
            sent += len(block)
    except OSError:
        pass
    raw = read_until_closed(sock)
    sock.close()
    assert responses(raw) == [413]
    assert parse(raw)[2] == PAYLOAD_TOO_LARGE  # the body the app answers for a body over MAX_BODY_BYTES
    # cut off (413, then closed) at 2 x 1 MiB of body plus 16 KiB of trailers, before the 64 MiB offered were all
    # sent; how much the client got out first depends on the kernel's socket buffers (up to 32 MiB here)
    assert sent < 64 * 1024 * 1024
    still_serving(base)


def test_a_refusal_never_answers_an_earlier_pipelined_request(slow_server: tuple[str, int]) -> None:
    """A 1 s request followed by a head that never ends (0.5 s allowed): the first gets its own 200, and the 408
    comes after it (not in its place), then the connection closes."""
    _, port = slow_server
    body = b'{"input": "slow"}'
    head = post_head("/embed", f"Authorization: Bearer {API_KEY}", f"Content-Length: {len(body)}")
    raw = exchange(port, head + body + b"GET /health HT")
    assert responses(raw) == [200, 408]
    assert raw.index(b'"embedding"') < raw.index(b'"request_timeout"')


def test_an_early_answer_is_the_only_answer(server: tuple[str, int]) -> None:
    """413 from the declared length, while the client keeps sending: the rest is discarded and the connection
    closes at the body limits, with no second response."""
    base, port = server
    sock = connect(port)
    sock.sendall(post_head("/embed", "Content-Length: 1000000000000"))
    started = time.monotonic()
    try:
        while time.monotonic() - started < 5:
            sock.sendall(b"x" * 16384)
            time.sleep(0.001)
    except OSError:
        pass
    raw = read_until_closed(sock)
    sock.close()
    assert responses(raw) == [413]
    still_serving(base)
