"""Shared benchmark helpers: start the real service as a subprocess and wait until it is ready; a light load client."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import orjson

KEY = "benchmark-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running_service(
    model: str, model_path: str, workers: int = 1, env: dict[str, str] | None = None, src: str | None = None
) -> Iterator[tuple[str, int]]:
    """`embedding-service serve` on a free port with the real weights (CPU unless `env` says otherwise);
    yields its base URL and process id. `src`: run the service from another source tree (an older checkout)."""
    port = free_port()
    env = {**os.environ, "MODEL_NAME": model, "MODEL_PATH": model_path, "EMBEDDING_API_KEY": KEY,
           "HF_HUB_OFFLINE": "true", "DEVICE": "cpu", "TIMEOUT_SECONDS": "120", **(env or {})}
    if src:
        env["PYTHONPATH"] = os.path.abspath(src)
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
        yield base, server.pid
    finally:
        server.terminate()
        server.wait(timeout=30)


class LoadClient:
    """A minimal keep-alive HTTP/1.1 JSON client on asyncio streams, for generating load.

    httpx costs ~7 ms of CPU per request on the 2-core development machine, which would be taken from the very
    cores the service runs on; this costs a fraction of that, so ratios measure the service, not the load generator.
    """

    def __init__(self, base: str, key: str = KEY) -> None:
        host_port = base.removeprefix("http://")
        self._host, port = host_port.split(":")
        self._port = int(port)
        self._key = key
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: object) -> object:
        status, _, answer = await self.request(path, body)
        if status != 200:
            raise RuntimeError(f"{path} answered {status}: {answer}")
        return answer

    async def request(self, path: str, body: object) -> tuple[int, dict[str, str], object]:
        """POST `body` as JSON; returns the status, the headers (lowercase names) and the parsed answer."""
        if self._streams is None:
            self._streams = await asyncio.open_connection(self._host, self._port)
        reader, writer = self._streams
        payload = orjson.dumps(body)
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self._host}\r\nAuthorization: Bearer {self._key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        answer = orjson.loads(await reader.readexactly(int(headers["content-length"])))
        if headers.get("connection") == "close":
            await self.close()
        return int(status_line.split(" ", 2)[1]), headers, answer

    async def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None
