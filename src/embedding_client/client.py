"""EmbeddingClient: the service over HTTP when it is there, the same model in-process when it is not."""

from __future__ import annotations

import email.utils
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import orjson
from tqdm import tqdm

from domain.model import InputType, ModelSpec, Vectors, resolve_model
from domain.ports import Embedder
from domain.services import embed_by_length
from embedding_client.errors import (
    ClientConfigurationError,
    EmbeddingRequestError,
    ModelMismatchError,
    RateLimited,
    ServiceUnavailable,
)

log = logging.getLogger(__name__)

LocalLoader = Callable[[ModelSpec], Embedder]
Source = Literal["service", "local"]

DEFAULT_MAX_BATCH = 100
LOCAL_BATCH = 32


class _ServiceDown(Exception):
    """Unreachable, timed out, or a 5xx after retries: the cases where the local fallback may take over."""


def load_local_embedder(spec: ModelSpec) -> Embedder:
    """Provision (verified) and load `spec` in this process, with the service's own settings from the environment."""
    from entrypoints.container import build_container
    from entrypoints.settings import Settings

    settings = Settings(_env_file=None, model_name=spec.name, models="")
    embedder: Embedder = build_container(settings).loader().load()
    return embedder


# A request's connection lost after it was sent (not a service that cannot be reached: that falls back at once).
DROPPED_MID_REQUEST = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
DROPPED_RETRIES = 2  # its own small budget (0.2 s, then 0.4 s): an endpoint that always drops falls back soon


def retry_after_seconds(response: httpx.Response, attempt: int) -> float:
    """Seconds to wait before retrying: Retry-After (seconds or HTTP date), else exponential backoff."""
    value = response.headers.get("retry-after", "").strip()
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                pass
            else:
                return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return float(min(2**attempt, 30))


def _error_of(response: httpx.Response) -> tuple[str, str]:
    try:
        error = response.json()["error"]
        return str(error["type"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return "http_error", response.text[:200] or response.reason_phrase


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        value = orjson.loads(response.content)  # ~2.5x faster than json on 100 x 768 floats
    except ValueError:
        raise _ServiceDown(f"{response.status_code} answer is not JSON") from None
    if not isinstance(value, dict):
        raise _ServiceDown(f"{response.status_code} answer is not a JSON object")
    return value


class EmbeddingClient:
    """Embeds texts with the service at EMBEDDING_SERVICE_URL, or in-process with the same model.

    The client pins one model (``model``, else EMBEDDING_MODEL, else whatever the service reports on first
    contact) and never returns vectors of another: the service's /metadata must report that model with the
    pinned revision and weights checksum, and every response must name it. When the URL is unset, the service
    is unreachable or answers 5xx (503 after its retries), and ``fallback_to_local`` is true, it loads the same
    verified weights in this process (MODEL_PATH, DEVICE and HF_* as for the service) and tries the service
    again after ``recheck_after_s``. 429 and 503 are retried honoring Retry-After; 4xx errors are raised.
    Batches are split to the service's limits. Not thread-safe: use one client per thread.
    """

    def __init__(
        self,
        service_url: str | None = None,
        api_key: str | None = None,
        fallback_to_local: bool = True,
        timeout: float = 10,
        *,
        model: str | None = None,
        max_retries: int = 5,
        max_retry_wait_s: float = 60.0,
        recheck_after_s: float = 30.0,
        max_request_bytes: int = 1_000_000,
        progress: bool | None = None,
        http_client: httpx.Client | None = None,
        local_loader: LocalLoader | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        url = service_url if service_url is not None else os.environ.get("EMBEDDING_SERVICE_URL", "")
        self.service_url: str | None = url.strip().rstrip("/") or None
        key = api_key if api_key is not None else os.environ.get("EMBEDDING_API_KEY", "")
        self._headers = {"content-type": "application/json"} | ({"authorization": f"Bearer {key}"} if key else {})
        self.fallback_to_local = fallback_to_local
        if self.service_url is None and not fallback_to_local:
            raise ClientConfigurationError("no service URL (EMBEDDING_SERVICE_URL) and fallback_to_local=False")
        configured = model or os.environ.get("EMBEDDING_MODEL") or None
        self._spec: ModelSpec | None = self._known(configured) if configured else None
        self._max_retries = max_retries
        self._max_retry_wait_s = max_retry_wait_s
        self._recheck_after_s = recheck_after_s
        self._max_request_bytes = max_request_bytes
        self._progress = progress
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=timeout)
        self._load_local = local_loader or load_local_embedder
        self._sleep = sleep
        self._verified = False
        self._max_batch = DEFAULT_MAX_BATCH
        self._down_until = 0.0
        self._local: Embedder | None = None
        self._local_lock = threading.Lock()
        self.last_source: Source | None = None

    @staticmethod
    def _known(name: str) -> ModelSpec:
        """A built-in model, or one of the models lock file (MODELS_LOCK, else ./models.lock.json)."""
        from adapters.model_lock import LockFileError, read_lock

        try:
            return resolve_model(name, read_lock(Path(os.environ.get("MODELS_LOCK", "models.lock.json"))))
        except LockFileError as exc:
            raise ClientConfigurationError(str(exc)) from None
        except KeyError as exc:
            raise ClientConfigurationError(str(exc.args[0])) from None

    # -- public API ---------------------------------------------------------------------------------------

    @property
    def model(self) -> str:
        """The pinned model's short name (asks the service's /metadata if no model was configured)."""
        return self._require_spec().name

    @property
    def dimension(self) -> int:
        return self._require_spec().dimension

    def embed(self, texts: Sequence[str], *, progress: bool | None = None) -> Vectors:
        """Embed `texts` in order: an (n, dimension) float32 array of L2-normalized rows."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of texts; use embed_one() for a single text")
        items = list(texts)
        if not all(isinstance(t, str) for t in items):
            raise TypeError("texts must be strings")
        spec = self._require_spec()
        if not items:
            return np.empty((0, spec.dimension), dtype=np.float32)
        chunks = list(self._chunks(items))
        show = progress if progress is not None else self._progress
        if show is None:
            show = len(chunks) > 1 and sys.stderr.isatty()
        parts: list[Vectors] = []
        with tqdm(total=len(items), unit="text", desc=f"embedding ({spec.name})", disable=not show) as bar:
            for chunk in chunks:
                parts.append(self._embed_chunk(chunk))
                bar.update(len(chunk))
        return np.concatenate(parts)

    def embed_one(self, text: str) -> Vectors:
        """Embed one text: a (dimension,) float32 vector."""
        vector: Vectors = self.embed([text], progress=False)[0]
        return vector

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- routing between service and local ----------------------------------------------------------------

    def _service_usable(self) -> bool:
        return self.service_url is not None and time.monotonic() >= self._down_until

    def _mark_down(self, reason: str) -> None:
        if not self.fallback_to_local:
            raise ServiceUnavailable(f"embedding service at {self.service_url} unavailable: {reason}")
        self._down_until = time.monotonic() + self._recheck_after_s
        log.warning(
            "embedding service at %s unavailable (%s); embedding in-process, retrying the service in %.0f s",
            self.service_url,
            reason,
            self._recheck_after_s,
        )

    def _require_spec(self) -> ModelSpec:
        if (self._spec is None or not self._verified) and self._service_usable():
            try:
                self._verify_service()
            except _ServiceDown as exc:
                self._mark_down(str(exc))
        if self._spec is None:
            where = f"the service at {self.service_url} was unavailable" if self.service_url else "no service URL"
            raise ClientConfigurationError(
                f"no model known for in-process embedding ({where}): pass model=... or set EMBEDDING_MODEL"
            )
        return self._spec

    def _embed_chunk(self, chunk: list[str]) -> Vectors:
        if self._service_usable():
            try:
                return self._embed_remote(chunk)
            except _ServiceDown as exc:
                self._mark_down(str(exc))
        return self._embed_local(chunk)

    def _chunks(self, texts: list[str]) -> Iterator[list[str]]:
        """Split by the service's batch limit and by request size (JSON bytes)."""
        chunk: list[str] = []
        size = 0
        for text in texts:
            cost = len(json.dumps(text, ensure_ascii=False).encode()) + 1
            if chunk and (len(chunk) >= self._max_batch or size + cost > self._max_request_bytes - 200):
                yield chunk
                chunk, size = [], 0
            chunk.append(text)
            size += cost
        if chunk:
            yield chunk

    # -- service ------------------------------------------------------------------------------------------

    def _verify_service(self) -> None:
        meta = _json_object(self._request("GET", "/metadata"))
        served_name = str(meta.get("model"))
        models = meta.get("models")
        listed: list[Any] = models if isinstance(models, list) else [meta]  # MODELS: several served
        served_models = {str(entry.get("model")): entry for entry in listed if isinstance(entry, dict)}
        if self._spec is None:
            try:
                expected = self._known(served_name)
            except ClientConfigurationError:
                raise ModelMismatchError(
                    f"the service at {self.service_url} serves {served_name!r}, which this client does not know"
                ) from None
        else:
            expected = self._spec
        entry = served_models.get(expected.name, meta if not served_models else {})
        identity = (entry.get("model"), entry.get("revision"), entry.get("weights_sha256"))
        if identity != (expected.name, expected.revision, expected.weights_sha256):
            raise ModelMismatchError(
                f"the service at {self.service_url} serves {', '.join(served_models) or served_name} (default "
                f"{served_name}: revision {meta.get('revision')}, weights {str(meta.get('weights_sha256'))[:12]}…) but "
                f"this client's vectors are {expected.name} (revision {expected.revision}, weights "
                f"{expected.weights_sha256[:12]}…); refusing to mix them. Point EMBEDDING_SERVICE_URL at a service "
                f"serving {expected.name} or create the client with model={served_name!r}."
            )
        self._spec = expected
        self._max_batch = max(1, int(meta.get("max_batch_size", DEFAULT_MAX_BATCH)))
        self._verified = True

    def _embed_remote(self, chunk: list[str]) -> Vectors:
        spec = self._require_spec()
        body = json.dumps({"texts": chunk, "model": spec.name}, ensure_ascii=False).encode()
        answer = _json_object(self._request("POST", "/embed", body))
        if answer.get("model") != spec.name:
            raise ModelMismatchError(f"the service answered with model {answer.get('model')!r}, not {spec.name}")
        vectors = np.asarray(answer.get("embeddings"), dtype=np.float32)
        if vectors.shape != (len(chunk), spec.dimension):
            raise ModelMismatchError(f"the service answered {vectors.shape} vectors for {len(chunk)} texts")
        self.last_source = "service"
        return vectors

    def _request(self, method: str, path: str, body: bytes | None = None) -> httpx.Response:
        url = f"{self.service_url}{path}"
        dropped = 0
        for attempt in range(self._max_retries + 1):
            try:
                response = self._http.request(method, url, content=body, headers=self._headers)
            except DROPPED_MID_REQUEST as exc:
                # the connection was lost under a request (a replica stopping behind a load balancer): embedding is
                # idempotent, so it is sent again, on a new connection, like a 503
                dropped += 1
                if dropped > DROPPED_RETRIES or attempt == self._max_retries:
                    raise _ServiceDown(f"{type(exc).__name__}: {exc}") from exc
                wait = min(0.2 * 2 ** (dropped - 1), self._max_retry_wait_s)
                log.info(
                    "connection lost (%s); retry %d/%d in %.1f s",
                    type(exc).__name__,
                    attempt + 1,
                    self._max_retries,
                    wait,
                )
                self._sleep(wait)
                continue
            except httpx.TransportError as exc:  # unreachable: fall back (or fail) at once, without waiting
                raise _ServiceDown(f"{type(exc).__name__}: {exc}") from exc
            if response.status_code not in (429, 503) or attempt == self._max_retries:
                break
            wait = min(retry_after_seconds(response, attempt), self._max_retry_wait_s)
            log.info(
                "service answered %d; retry %d/%d in %.1f s", response.status_code, attempt + 1, self._max_retries, wait
            )
            self._sleep(wait)
        if response.is_success:
            return response
        error_type, message = _error_of(response)
        if response.status_code == 429:
            raise RateLimited(f"service still rate-limiting after {self._max_retries} retries: {message}")
        if response.status_code >= 500:
            raise _ServiceDown(f"{response.status_code} {error_type}: {message}")
        raise EmbeddingRequestError(response.status_code, error_type, message)

    # -- in-process ---------------------------------------------------------------------------------------

    def _embed_local(self, chunk: list[str]) -> Vectors:
        spec = self._require_spec()
        with self._local_lock:
            if self._local is None:
                log.info("loading %s in-process for local embedding", spec.name)
                self._local = self._load_local(spec)
        if self._local.info.spec != spec:
            raise ModelMismatchError(f"local embedder is {self._local.info.spec.name}, not {spec.name}")
        # as the service embeds texts sent to /embed: documents, behind the model's document prompt (if it has one)
        prompt = spec.prompt_for(InputType.DOCUMENT)
        vectors = embed_by_length(self._local, [prompt + text for text in chunk], LOCAL_BATCH)
        self.last_source = "local"
        return vectors
