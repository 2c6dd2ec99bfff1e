"""Shared benchmark helpers: start the real service as a subprocess and wait until it is ready."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

KEY = "benchmark-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running_service(model: str, model_path: str, workers: int = 1) -> Iterator[str]:
    """`embedding-service serve` on a free port with the real weights (CPU); yields its base URL."""
    port = free_port()
    env = {**os.environ, "MODEL_NAME": model, "MODEL_PATH": model_path, "EMBEDDING_API_KEY": KEY,
           "HF_HUB_OFFLINE": "true", "DEVICE": "cpu", "TIMEOUT_SECONDS": "120"}
    command = [sys.executable, "-m", "entrypoints.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("service did not become ready")
            time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)
