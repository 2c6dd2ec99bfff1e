"""`embedding-service serve` as a real process: startup refusal, readiness, auth, log format."""

from __future__ import annotations

import http.client
import re
import time
from pathlib import Path

import httpx

from tests.support import API_KEY, AUTH, free_port, serve, wait_http_ready

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (INFO|WARNING|ERROR|DEBUG) [\w.]+ - ")


def test_serve_refuses_to_start_without_an_api_key(tmp_path: Path) -> None:
    process = serve({"PORT": str(free_port())}, tmp_path)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "no API key configured" in output


def test_serve_answers_with_auth_and_logs_in_the_agreed_format(tmp_path: Path) -> None:
    port = free_port()
    process = serve({"PORT": str(port), "PEOPLEPAD_CLIENT_KEY": API_KEY}, tmp_path)
    try:
        base = wait_http_ready(process, port)
        ok = httpx.post(f"{base}/embed", json={"input": "secret contact text"}, headers=AUTH)
        assert ok.status_code == 200 and len(ok.json()["data"][0]["embedding"]) == 768
        assert httpx.post(f"{base}/embed", json={"input": "x"}).status_code == 401
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines and all(LOG_LINE.match(line) for line in lines), output
    assert "secret contact text" not in output and API_KEY not in output
    assert any("model all-mpnet-base-v2 ready" in line for line in lines)


def test_serve_runs_the_guarded_protocol_with_limits_from_the_environment(tmp_path: Path) -> None:
    port = free_port()
    process = serve({"PORT": str(port), "EMBEDDING_API_KEY": API_KEY, "MAX_HEADER_BYTES": "4096"}, tmp_path)
    try:
        base = wait_http_ready(process, port)
        assert httpx.get(f"{base}/health", headers={"x-padding": "p" * 3000}).status_code == 200
        refused = httpx.get(f"{base}/health", headers={"x-padding": "p" * 5000})
        assert (refused.status_code, refused.json()["error"]["type"]) == (431, "headers_too_large")
    finally:
        process.terminate()
        process.communicate(timeout=30)


def idle_then_reused(base: str, idle_s: float) -> bool:
    """Whether a kept-alive connection, idle for `idle_s`, still carries a request (the server kept it open)."""
    connection = http.client.HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]), timeout=10)
    try:
        connection.request("GET", "/health")
        first = connection.getresponse()
        first.read()
        assert first.status == 200
        opened = connection.sock
        time.sleep(idle_s)
        try:
            connection.request("GET", "/health")
            again = connection.getresponse()
            again.read()
        except (http.client.HTTPException, OSError):
            return False
        return again.status == 200 and connection.sock is opened
    finally:
        connection.close()


def test_serve_keeps_idle_connections_open_for_keep_alive_seconds(tmp_path: Path) -> None:
    """Behind a load balancer that reuses connections (an ALB: 60 s), the service must not close them first."""
    port = free_port()
    process = serve({"PORT": str(port), "EMBEDDING_API_KEY": API_KEY, "KEEP_ALIVE_SECONDS": "2"}, tmp_path)
    try:
        base = wait_http_ready(process, port)
        assert idle_then_reused(base, 0.5)
        assert not idle_then_reused(base, 3.0)  # closed after 2 s (uvicorn's default, 5 s, would have kept it)
    finally:
        process.terminate()
        process.communicate(timeout=30)
