"""A loopback stand-in for the Hugging Face hub serving local model folders: the file endpoint
(`/{repo}/resolve/{revision}/{file}`) and the model-info API (`/api/models/{repo}[/revision/{revision}]`, with each
file's size, git blob id and, for LFS files, sha256 as `HfApi.model_info(..., files_metadata=True)` reads them)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

# Files the hub keeps in LFS (as a repo's .gitattributes routes them), and any file over 10 MiB.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".h5", ".msgpack", ".ot", ".model", ".zip")
LFS_MIN_BYTES = 10 << 20


def _sibling(folder: Path, path: Path) -> dict[str, object]:
    data = path.read_bytes()
    entry: dict[str, object] = {"rfilename": path.relative_to(folder).as_posix(), "size": len(data)}
    if path.name.endswith(LFS_SUFFIXES) or len(data) > LFS_MIN_BYTES:
        sha256 = hashlib.sha256(data).hexdigest()
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()
        entry["blobId"] = _git_blob_id(pointer)
        entry["lfs"] = {"sha256": sha256, "size": len(data), "pointerSize": len(pointer)}
    else:
        entry["blobId"] = _git_blob_id(data)
    return entry


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@contextmanager
def serve_fake_hub(
    repo_id: str,
    revision: str,
    folder: Path,
    corrupt: set[str] | None = None,
    *,
    more_repos: Mapping[str, tuple[str, Path]] | None = None,
) -> Iterator[str]:
    """Serve `folder` as `repo_id` at `revision`, its branch main pointing there (and each of `more_repos`, repo ->
    (revision, folder), alike); yields the endpoint. Files named in `corrupt` are served with their last byte flipped,
    while the model-info API reports the true checksums, as a hub whose storage went bad would."""
    corrupted = corrupt or set()
    repos = {repo_id: (revision, folder), **(more_repos or {})}
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _file(self, path: str) -> bytes | None:
            for repo, (commit, root) in repos.items():
                asked = (f"/{repo}/resolve/{rev}/" for rev in (commit, "main"))
                prefix = next((prefix for prefix in asked if path.startswith(prefix)), None)
                if prefix is not None:
                    name = unquote(path[len(prefix) :])
                    file = root / name
                    if ".." in name.split("/") or not file.is_file():
                        return None
                    data = file.read_bytes()
                    if repo == repo_id and name in corrupted:
                        data = data[:-1] + bytes([data[-1] ^ 0xFF])
                    return data
            return None

        def _model_info(self, path: str) -> bytes | None:
            if not path.startswith("/api/models/"):
                return None
            repo, _, asked = path[len("/api/models/") :].partition("/revision/")
            if repo not in repos:
                return None
            commit, root = repos[repo]
            if asked and unquote(asked) not in (commit, "main"):
                return None
            siblings = [_sibling(root, p) for p in sorted(root.rglob("*")) if p.is_file()]
            return json.dumps({"id": repo, "sha": commit, "siblings": siblings}).encode()

        def _respond(self, with_body: bool) -> None:
            requests.append(f"{self.command} {self.path}")
            path = urlsplit(self.path).path
            data = self._model_info(path) if path.startswith("/api/") else self._file(path)
            if data is None:
                self.send_response(404)
                api_error = "RevisionNotFound" if "/revision/" in path else "RepoNotFound"
                self.send_header("X-Error-Code", api_error if path.startswith("/api/") else "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header(
                "X-Repo-Commit", next((c for r, (c, _) in repos.items() if path[1:].startswith(f"{r}/")), "")
            )
            if path.startswith("/api/"):
                self.send_header("Content-Type", "application/json")
            self.end_headers()
            if with_body:
                self.wfile.write(data)

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
