"""A loopback stand-in for the Hugging Face hub's file endpoints, serving a local model folder."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@contextmanager
def serve_fake_hub(repo_id: str, revision: str, folder: Path, corrupt: set[str] | None = None) -> Iterator[str]:
    """Serve `folder` as `repo_id` at `revision` under /{repo}/resolve/{revision}/{file}; yields the endpoint."""
    corrupt = corrupt or set()
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _resolve(self) -> tuple[bytes, str] | None:
            prefix = f"/{repo_id}/resolve/{revision}/"
            if not self.path.startswith(prefix):
                return None
            name = self.path[len(prefix) :].split("?")[0]
            path = folder / name
            if not path.is_file():
                return None
            data = path.read_bytes()
            if name in corrupt:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            return data, name

        def _headers(self, data: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("X-Repo-Commit", revision)
            self.end_headers()

        def _respond(self, with_body: bool) -> None:
            requests.append(f"{self.command} {self.path}")
            found = self._resolve()
            if found is None:
                self.send_error(404)
                return
            self._headers(found[0])
            if with_body:
                self.wfile.write(found[0])

        def do_HEAD(self) -> None:
            self._respond(with_body=False)

        def do_GET(self) -> None:
            self._respond(with_body=True)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        serve_fake_hub.requests = requests  # type: ignore[attr-defined]
        yield endpoint
    finally:
        server.shutdown()
        server.server_close()
