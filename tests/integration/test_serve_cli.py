"""`embedding-service serve` as a real process: startup refusal, readiness, auth, log format."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support import API_KEY, AUTH

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (INFO|WARNING|ERROR|DEBUG) [\w.]+ - ")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve(env: dict[str, str], tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "entrypoints.cli", "serve", "--host", "127.0.0.1", "--port", env["PORT"]],
        env={**os.environ, "EMBEDDER_BACKEND": "fake", **env}, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_serve_refuses_to_start_without_an_api_key(tmp_path: Path) -> None:
    process = serve({"PORT": str(free_port())}, tmp_path)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "no API key configured" in output


def test_serve_answers_with_auth_and_logs_in_the_agreed_format(tmp_path: Path) -> None:
    port = free_port()
    process = serve({"PORT": str(port), "PEOPLEPAD_CLIENT_KEY": API_KEY}, tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "server did not become ready"
            time.sleep(0.1)
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
