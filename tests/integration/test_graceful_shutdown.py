"""Graceful shutdown under load, on a real server process serving the real MiniLM: SIGTERM lets the requests in flight
finish while new ones (and /health) are answered 503 shutting_down with Retry-After, for at most
SHUTDOWN_DRAIN_SECONDS; then the process stops."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from entrypoints.http.app import create_app
from tests.support import API_KEY, AUTH, MODEL_ROOT, ServerProcess, fake_settings, model_dir, uvicorn_app

LONG_TEXTS = [f"Note {i}: " + "the harbour jazz night moved to the pier because of the rain " * 12 for i in range(100)]


def minilm_server(tmp_path: Path, drain_s: float) -> ServerProcess:
    model_dir("all-MiniLM-L6-v2")
    env = {
        "EMBEDDER_BACKEND": "sentence_transformers",
        "MODEL_NAME": "all-MiniLM-L6-v2",
        "MODEL_PATH": str(MODEL_ROOT),
        "HF_HUB_OFFLINE": "true",
        "DEVICE": "cpu",
        "EMBEDDING_API_KEY": API_KEY,
        "TIMEOUT_SECONDS": "120",
        "SHUTDOWN_DRAIN_SECONDS": str(drain_s),
    }
    server = ServerProcess(env, tmp_path)
    server.wait_ready(timeout_s=180)
    # measured once, so admission knows the model's speed (before that it queues one model call's worth)
    assert httpx.post(f"{server.base}/embed", json={"texts": LONG_TEXTS}, headers=AUTH, timeout=120).status_code == 200
    return server


def send_in_background(base: str, count: int) -> tuple[list[threading.Thread], list[object]]:
    """`count` requests of 100 long texts each (about a second or more of model time each, on 2 cores)."""
    answers: list[object] = []

    def one() -> None:
        try:
            response = httpx.post(f"{base}/embed", json={"texts": LONG_TEXTS}, headers=AUTH, timeout=120)
            body = response.json()
            answers.append((response.status_code, len(body.get("embeddings", [])) or body.get("error", {}).get("type")))
        except ValueError:  # not JSON: a connection cut mid-answer
            answers.append((response.status_code, "not json"))
        except httpx.HTTPError as exc:
            answers.append(type(exc).__name__)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, answers


def test_sigterm_finishes_the_requests_in_flight_and_answers_new_ones_503(tmp_path: Path) -> None:
    server = minilm_server(tmp_path, drain_s=60)
    threads, answers = send_in_background(server.base, 3)
    time.sleep(0.5)  # all three are in the model's queue by now
    began = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    new = httpx.post(f"{server.base}/embed", json={"texts": ["a new request"]}, headers=AUTH, timeout=10)
    assert (new.status_code, new.json()["error"]["type"]) == (503, "shutting_down")
    assert (new.headers["retry-after"], new.headers["connection"]) == ("1", "close")
    openai = httpx.post(f"{server.base}/v1/embeddings", json={"input": "x"}, headers=AUTH, timeout=10)
    assert (openai.status_code, openai.json()["error"]["code"]) == (503, "shutting_down")
    assert httpx.get(f"{server.base}/health", timeout=10).status_code == 503  # the load balancer stops sending here
    for thread in threads:
        thread.join(timeout=120)
    assert answers == [(200, 100)] * 3  # every request in flight was answered in full
    server.stop()
    assert time.monotonic() - began < 60
    assert "draining (" in server.log() and "drained: no request in flight" in server.log()


@pytest.mark.parametrize(
    ("drain_s", "second_sigterm_s", "logged"),
    [
        (0.5, None, "requests in flight after SHUTDOWN_DRAIN_SECONDS=0.5; stopping"),  # the bound runs out
        (60.0, 0.5, "second SIGTERM: "),  # a second SIGTERM ends the drain at once
    ],
    ids=["bound", "second-sigterm"],
)
def test_the_drain_is_bounded_by_shutdown_drain_seconds_or_a_second_sigterm(
    tmp_path: Path, drain_s: float, second_sigterm_s: float | None, logged: str
) -> None:
    server = minilm_server(tmp_path, drain_s=drain_s)
    threads, answers = send_in_background(server.base, 4)  # several seconds of work queued
    time.sleep(0.5)
    began = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    if second_sigterm_s is not None:
        time.sleep(second_sigterm_s)
        server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=30)
    stopped_s = time.monotonic() - began
    for thread in threads:
        thread.join(timeout=30)
    # the drain, the server's own 1 s, the model call then running (its batcher waits for it, 5 s at most), slack
    assert stopped_s < (second_sigterm_s or drain_s) + 1 + 5 + 3
    # those still waiting were answered 503 shutting_down (a retrying client goes elsewhere), none cut mid-answer
    assert len(answers) == 4 and (503, "shutting_down") in answers
    assert set(answers) <= {(200, 100), (503, "shutting_down")}, answers
    log = "\n".join(server.lines)
    assert logged in log, log
    assert "Traceback" not in log, log


@pytest.mark.parametrize("drain_s", [0])
def test_a_drain_of_zero_stops_at_once(tmp_path: Path, drain_s: float) -> None:
    server = minilm_server(tmp_path, drain_s=drain_s)
    began = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=30)
    assert time.monotonic() - began < 5
    assert "draining" not in server.log()


def post_large_body_slowly(port: int, size: int) -> bytes:
    """A POST whose body arrives in 64 KiB pieces; everything the server answers, or the error that ended it."""
    head = (
        f"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
    ).encode()
    body = b'{"input": "' + b"x" * (size - 13) + b'"}'
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(head)
            for start in range(0, size, 65536):
                sock.sendall(body[start : start + 65536])
                time.sleep(0.005)
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError as exc:
            return answer + f" [{type(exc).__name__}]".encode()
    return answer


def test_a_draining_server_reads_a_large_body_before_answering_503(tmp_path: Path) -> None:
    """Answered before the body is read, a draining server's 503 would reach a client still sending as a reset
    (the connection closes with data unread); it reads (and drops) the body first, for up to a second."""
    app = create_app(fake_settings())
    with uvicorn_app(app) as (_, port):
        app.state.drain.start()  # as SIGTERM does; this server keeps running, answering 503
        for _ in range(3):
            answer = post_large_body_slowly(port, 1_000_000)
            assert answer.startswith(b"HTTP/1.1 503"), answer[-200:]
            assert b'"shutting_down"' in answer and b"connection: close" in answer.lower()
