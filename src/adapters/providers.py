"""Embedding with an account's own provider (bring your own key): its request template rendered with the texts, the
vectors read back with its JSONPath and checked, retries with backoff that honour Retry-After, and a circuit breaker
per provider. The provider's key, its endpoint's path and query, and the bodies it answers never reach a log line or
an error message: logs name the host and the HTTP status at most."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from functools import lru_cache, partial
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
from jsonpath_ng.ext import parse as parse_jsonpath

from adapters.outbound import OutboundClient, OutboundPolicy, Resolver
from domain.errors import (
    InvalidInput,
    ProviderBadResponse,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from domain.model import ProviderConfig, Vectors

log = logging.getLogger(__name__)

T = TypeVar("T")
Rows = npt.NDArray[np.float64]

_TEXT = re.compile(r"\$TEXT(?!S)")
_TEXTS = re.compile(r"\$TEXTS")
# Texts a template is tried with before it is stored: quotes, a backslash, control characters, non-ASCII, the
# placeholders themselves; a `$TEXT` outside a JSON string or a `$TEXTS` inside one cannot survive them.
_SAMPLE_TEXTS = ('say "hi" \\ $TEXT $TEXTS\n\t\u00e9\u6771\u4eac \u2028 \U0001f600', "second")
_RETRYABLE = frozenset({408, 429})
_RETRY_AFTER_LIMIT_S = 86_400.0
_HEADER_VALUE = re.compile(r"[\x21-\x7e]+")


class PostedAnswer(Protocol):
    """An HTTP answer as the outbound client returns it (adapters.outbound.OutboundResponse)."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def body(self) -> bytes: ...


class JsonPoster(Protocol):
    """What ProviderClient needs of the SSRF-safe outbound client (adapters.outbound.OutboundClient): one POST,
    redirects never followed (a 3xx comes back as an answer). It raises ProviderTimeout on a connect or read
    timeout, ProviderUnavailable on a connection error, ProviderBadResponse for a body too large and
    EndpointRefused for an endpoint it will not call."""

    async def post_json(self, url: str, body: bytes, headers: Mapping[str, str]) -> PostedAnswer: ...


def check_template(template: str, response_path: str) -> None:
    """Refuse, with InvalidInput, a provider whose template or path could never work: the template must hold either
    "$TEXT" inside a JSON string (one call per text) or $TEXTS in place of a JSON value (a JSON list of texts, one
    call per batch), never both, and be valid JSON once rendered; `response_path` must be a JSONPath."""
    batch = _batch_mode(template)
    samples = list(_SAMPLE_TEXTS) if batch else [_SAMPLE_TEXTS[0]]
    try:
        document = _loads(_render(template, samples, batch))
    except (ValueError, RecursionError):
        where = (
            '$TEXTS belongs in place of a JSON value, unquoted, e.g. {"input": $TEXTS}'
            if batch
            else 'put "$TEXT" inside a JSON string, e.g. {"input": "$TEXT"}'
        )
        raise InvalidInput(f"request_template is not valid JSON once texts are put in it: {where}.") from None
    if not _holds(document, samples, batch):
        raise InvalidInput(
            "request_template does not carry the texts: "
            + ("$TEXTS must stand alone as a JSON value." if batch else '"$TEXT" must be inside a JSON string.')
        )
    _compiled_path(response_path)


def template_model(template: str) -> str | None:
    """The top-level "model" string of a request template (part of a provider's identity, for cache entries and
    the circuit breaker); None when it has none, or one that varies with the texts, or the template is invalid."""
    return _template_model(template)


@lru_cache(maxsize=1024)
def _template_model(template: str) -> str | None:
    try:
        batch = _batch_mode(template)
        models = {
            document.get("model") if isinstance(document, dict) else None
            for document in (_loads(_render(template, sample, batch)) for sample in (["a"], ["b", "c"]))
        }
    except (InvalidInput, ValueError, RecursionError):
        return None
    model = models.pop() if len(models) == 1 else None
    return model if isinstance(model, str) else None


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A Retry-After header's wait in seconds (delta-seconds or an HTTP-date, `now` in epoch seconds), at least 0 and
    at most a day; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return min(float(value), _RETRY_AFTER_LIMIT_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, when.timestamp() - now), _RETRY_AFTER_LIMIT_S)


class ProviderClient:
    """Embeds texts with an account's provider through the outbound client: `$TEXTS` templates send at most
    `max_batch` texts per call, `$TEXT` templates one text per call, at most `concurrency` calls at once per request.

    A call answered 408, 429 or 5xx, timed out or not connected is tried again, up to `max_attempts` calls, after
    `base_backoff_s * 2**n` seconds (at most `max_backoff_s`) or the provider's Retry-After if longer; a Retry-After
    beyond `max_backoff_s` gives up at once. Other answers than 2xx (3xx included: redirects are never followed) are
    ProviderRejected, not retried. After `breaker_failures` failed calls in a row to one provider (endpoint host and
    template model) its circuit opens: calls fail at once for `breaker_open_s`, then one trial call decides."""

    def __init__(
        self,
        http: JsonPoster,
        max_batch: int = 96,
        max_attempts: int = 3,
        base_backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        breaker_failures: int = 5,
        breaker_open_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        concurrency: int = 4,
    ) -> None:
        if min(max_batch, max_attempts, breaker_failures, concurrency) < 1:
            raise ValueError("max_batch, max_attempts, breaker_failures and concurrency must be at least 1")
        self._http = http
        self._max_batch = max_batch
        self._max_attempts = max_attempts
        self._base_backoff_s = base_backoff_s
        self._max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._concurrency = concurrency
        self._breakers = CircuitBreakers(breaker_failures, breaker_open_s, clock)

    async def embed(self, config: ProviderConfig, api_key: str, texts: Sequence[str]) -> Vectors:
        """One L2-normalized float32 row per text, in input order. Providers differ (some return unit vectors, some
        do not), so every row is normalized here, like the local models' vectors. Raises ProviderRejected,
        ProviderBadResponse, ProviderUnavailable, ProviderTimeout, EndpointRefused, or InvalidInput for a template
        or key that cannot be sent."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        batch = _batch_mode(config.request_template)
        path = _compiled_path(config.response_path)
        if not _HEADER_VALUE.fullmatch(api_key):
            raise InvalidInput("the provider key is empty or holds characters an HTTP header cannot carry.")
        headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        size = self._max_batch if batch else 1
        chunks = [list(texts[start : start + size]) for start in range(0, len(texts), size)]
        # one circuit per account's provider: host, model and the key (a fingerprint), so one account's exhausted
        # or revoked key never opens the circuit of another account calling the same provider
        fingerprint = hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:16]
        identity = (_host(config.endpoint), f"{template_model(config.request_template)}|{fingerprint}")
        call = _Call(config, identity, headers, path, batch)
        parts = await self._all([partial(self._send, call, chunk) for chunk in chunks])
        dimensions = sorted({part.shape[1] for part in parts})
        if len(dimensions) > 1:
            raise ProviderBadResponse(f"vectors of {dimensions[0]} and {dimensions[-1]} dimensions in one request")
        return _normalized(np.concatenate(parts))

    async def _send(self, call: _Call, texts: list[str]) -> Rows:
        body = _render(call.config.request_template, texts, call.batch)
        host = call.identity[0]
        for attempt in range(1, self._max_attempts + 1):
            trial = self._breakers.admit(call.identity)
            try:
                answer = await self._http.post_json(call.config.endpoint, body, call.headers)
            except (ProviderTimeout, ProviderUnavailable) as exc:
                self._breakers.failed(call.identity, trial)
                last = attempt == self._max_attempts
                log.log(
                    logging.WARNING if last else logging.INFO,
                    "provider %s: %s (attempt %d of %d)",
                    host,
                    "timed out" if isinstance(exc, ProviderTimeout) else "unreachable",
                    attempt,
                    self._max_attempts,
                )
                if last:
                    raise
                await self._sleep(self._backoff(attempt))
                continue
            except BaseException:
                self._breakers.released(call.identity, trial)
                raise
            status = answer.status
            if 200 <= status < 300:
                self._breakers.succeeded(call.identity, trial)
                # parsing a large answer (up to the response cap) would stall every caller on the event loop
                return await asyncio.to_thread(_read_vectors, answer.body, call.path, len(texts))
            if not (status in _RETRYABLE or 500 <= status < 600):
                self._breakers.succeeded(call.identity, trial)  # it answered: the request or the key is wrong
                log.info("provider %s refused a request with HTTP %d", host, status)
                raise ProviderRejected(status)
            self._breakers.failed(call.identity, trial)
            wait = retry_after_seconds(_header(answer.headers, "retry-after"), time.time())
            last = attempt == self._max_attempts
            log.log(
                logging.WARNING if last else logging.INFO,
                "provider %s answered HTTP %d (attempt %d of %d)",
                host,
                status,
                attempt,
                self._max_attempts,
            )
            if wait is not None and wait > self._max_backoff_s:
                raise ProviderUnavailable(
                    f"it answered HTTP {status} and asked for {math.ceil(wait)} s before another call",
                    retry_after_s=max(1, math.ceil(wait)),
                )
            if last:
                reason = f"it answered HTTP {status} to {attempt} call{'s' if attempt > 1 else ''}"
                if wait is None:
                    raise ProviderUnavailable(reason)
                raise ProviderUnavailable(reason, retry_after_s=max(1, math.ceil(wait)))
            await self._sleep(max(wait or 0.0, self._backoff(attempt)))
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, attempt: int) -> float:
        return float(min(self._base_backoff_s * 2 ** (attempt - 1), self._max_backoff_s))

    async def _all(self, jobs: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
        """Run the jobs, at most `concurrency` at once, results in order; the first failure cancels the rest."""
        if len(jobs) == 1 or self._concurrency == 1:
            return [await job() for job in jobs]
        gate = asyncio.Semaphore(self._concurrency)

        async def gated(job: Callable[[], Awaitable[T]]) -> T:
            async with gate:
                return await job()

        tasks = [asyncio.ensure_future(gated(job)) for job in jobs]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:
                failure = task.exception() if task.done() and not task.cancelled() else None
                if failure is not None:
                    raise failure
            return [task.result() for task in tasks]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True)
class _Call:
    config: ProviderConfig
    identity: tuple[str, str | None]
    headers: Mapping[str, str] = field(repr=False)  # the key, in its Authorization header
    path: Any
    batch: bool


@dataclass
class _Circuit:
    failures: int = 0
    open_until: float | None = None
    trial: bool = False  # the one call let through after the open window is under way


class CircuitBreakers:
    """One circuit per provider identity, in one event loop. Closed, it counts failed calls in a row (timeouts,
    connection errors, 408, 429, 5xx; any other answer resets the count); at `failures` it opens and calls fail at
    once for `open_s`; then one trial call is let through: its success closes the circuit, its failure opens it
    again. Only providers with failures are tracked, at most `max_tracked` of them."""

    def __init__(self, failures: int, open_s: float, clock: Callable[[], float], max_tracked: int = 10_000) -> None:
        self._failures = failures
        self._open_s = open_s
        self._clock = clock
        self._max_tracked = max_tracked
        self._circuits: OrderedDict[tuple[str, str | None], _Circuit] = OrderedDict()

    def admit(self, identity: tuple[str, str | None]) -> bool:
        """Let a call through, or raise ProviderUnavailable; True when the call is the half-open trial."""
        circuit = self._circuits.get(identity)
        if circuit is None or circuit.open_until is None:
            return False
        remaining = circuit.open_until - self._clock()
        if remaining > 0:
            raise ProviderUnavailable(
                f"its circuit is open after {circuit.failures} failed calls in a row",
                retry_after_s=max(1, math.ceil(remaining)),
            )
        if circuit.trial:
            raise ProviderUnavailable("its circuit is open and a trial call is under way", retry_after_s=1)
        circuit.trial = True
        return True

    def succeeded(self, identity: tuple[str, str | None], trial: bool) -> None:
        circuit = self._circuits.pop(identity, None)
        if circuit is not None and circuit.open_until is not None:
            log.warning("provider %s answers again; its circuit is closed", identity[0])

    def failed(self, identity: tuple[str, str | None], trial: bool) -> None:
        circuit = self._circuits.get(identity)
        if circuit is None:
            circuit = self._circuits[identity] = _Circuit()
            while len(self._circuits) > self._max_tracked:
                self._circuits.popitem(last=False)
        circuit.failures += 1
        if trial or (circuit.open_until is None and circuit.failures >= self._failures):
            circuit.open_until, circuit.trial = self._clock() + self._open_s, False
            log.warning(
                "provider %s failed %d calls in a row; its circuit is open for %g s",
                identity[0],
                circuit.failures,
                self._open_s,
            )

    def released(self, identity: tuple[str, str | None], trial: bool) -> None:
        """A call ended without telling whether the provider works (cancelled, refused before it was sent)."""
        circuit = self._circuits.get(identity)
        if trial and circuit is not None:
            circuit.trial = False


def _host(endpoint: str) -> str:
    """The endpoint's host name (and port) alone, as logs may show it: no user info, path, query or fragment."""
    try:
        parts = urlsplit(endpoint)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "(invalid endpoint)"
    return f"{host}:{port}" if port else host


def _batch_mode(template: str) -> bool:
    has_text, has_texts = _TEXT.search(template) is not None, _TEXTS.search(template) is not None
    if has_text and has_texts:
        raise InvalidInput('request_template holds both "$TEXT" and $TEXTS; use one of them.')
    if not (has_text or has_texts):
        raise InvalidInput(
            'request_template must hold "$TEXT" inside a JSON string (one call per text) or $TEXTS in place of a '
            'JSON value (a list of texts per call), e.g. {"input": $TEXTS, "model": "..."}.'
        )
    return has_texts


def _render(template: str, texts: Sequence[str], batch: bool) -> bytes:
    """The template with the texts JSON-encoded into it, in one pass (a text holding "$TEXT" stays as it is)."""
    value = json.dumps(list(texts)) if batch else json.dumps(texts[0])[1:-1]
    rendered = (_TEXTS if batch else _TEXT).sub(lambda _: value, template)
    try:
        return rendered.encode()
    except UnicodeEncodeError:
        raise InvalidInput("request_template holds characters that cannot be encoded as UTF-8.") from None


def _holds(document: Any, samples: list[str], batch: bool) -> bool:
    stack = [document]
    while stack:
        node = stack.pop()
        if batch and node == samples:
            return True
        if not batch and isinstance(node, str) and samples[0] in node:
            return True
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


# The JSONPath a provider's answer is read with: fields, quoted fields, indexes, [*] and .* steps from $ (what
# every provider's shape needs); no filters, regexes, arithmetic, unions or recursive descent, whose cost on a
# large answer a caller could choose.
_SAFE_PATH = re.compile(r"\$(?:\.[A-Za-z_][A-Za-z0-9_]*|\.\*|\[\*\]|\[\d{1,6}\]|\['[^'\\]{1,100}'\])*")


@lru_cache(maxsize=1024)
def _compiled_path(response_path: str) -> Any:
    if len(response_path) > 512 or not _SAFE_PATH.fullmatch(response_path):
        raise InvalidInput(
            "response_path must be a plain JSONPath of fields, indexes and [*] from $, e.g. $.data[*].embedding "
            "(OpenAI) or $.embeddings (a list of vectors); filters, unions and recursive descent are not taken."
        )
    try:
        return parse_jsonpath(response_path)
    except Exception:  # the parser raises several exception types of its own
        raise InvalidInput(
            "response_path is not a JSONPath; e.g. $.data[*].embedding (OpenAI) or $.embeddings (a list of vectors)."
        ) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _loads(data: bytes) -> Any:
    return json.loads(data, parse_constant=_refuse_constant)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def _read_vectors(body: bytes, path: Any, count: int) -> Rows:
    """`count` vectors from a provider's answer: the path's matches, one list of numbers per text, or one match that
    is a list of `count` such lists. Nothing of the body goes into an error message."""
    try:
        document = _loads(body)
    except (ValueError, RecursionError):
        raise ProviderBadResponse("it is not JSON (or holds NaN or Infinity)") from None
    try:
        matches = [match.value for match in path.find(document)]
    except Exception:
        raise ProviderBadResponse("the response_path could not be applied to it") from None
    if (
        len(matches) == 1
        and isinstance(matches[0], list)
        and matches[0]
        and all(isinstance(r, list) for r in matches[0])
    ):
        matches = matches[0]
    if not matches:
        raise ProviderBadResponse("the response_path matched nothing in it")
    if len(matches) != count:
        raise ProviderBadResponse(f"it holds {len(matches)} vectors for {count} texts")
    dimension = len(matches[0]) if isinstance(matches[0], list) else 0
    for row in matches:
        if not isinstance(row, list) or not row:
            raise ProviderBadResponse("a match of the response_path is not a list of numbers")
        if len(row) != dimension:
            raise ProviderBadResponse(f"it holds vectors of {dimension} and {len(row)} dimensions")
        if any(isinstance(value, bool) or not isinstance(value, int | float) for value in row):
            raise ProviderBadResponse("a vector holds a value that is not a number")
    try:
        rows = np.array(matches, dtype=np.float64)
    except (OverflowError, ValueError, TypeError):
        raise ProviderBadResponse("a vector holds a number out of range") from None
    if not np.isfinite(rows).all():
        raise ProviderBadResponse("a vector holds a value that is not finite")
    return rows


def _normalized(rows: Rows) -> Vectors:
    """Unit-length float32 rows, scaled first so that neither huge nor tiny values overflow or vanish."""
    scale = np.abs(rows).max(axis=1, keepdims=True)
    if (scale == 0).any():
        raise ProviderBadResponse("a vector is all zeros")
    scaled = rows / scale
    unit = scaled / np.linalg.norm(scaled, axis=1, keepdims=True)
    return unit.astype(np.float32)


class RemoteProviders:
    """The RemoteEmbedder port: the outbound rules (checked when a provider is registered: a refused endpoint is a
    400 naming its rule) and the provider client, over the SSRF-safe outbound client."""

    def __init__(self, policy: OutboundPolicy, client: ProviderClient, resolver: Resolver | None = None) -> None:
        self._policy = policy
        self._client = client
        self._resolver = resolver

    async def check(self, config: ProviderConfig) -> ProviderConfig:
        check_template(config.request_template, config.response_path)
        endpoint = self._policy.check_url(config.endpoint)
        await self._policy.resolve(endpoint, self._resolver)
        return dataclasses.replace(config, endpoint=endpoint.url)  # as it is called: normalized, no fragment

    async def embed(self, config: ProviderConfig, api_key: str, texts: Sequence[str]) -> Vectors:
        return await self._client.embed(config, api_key, texts)

    def identity(self, config: ProviderConfig) -> str:
        """Host and model, and a digest of the whole endpoint, template and path: another port or path (another
        deployment behind a gateway), or a template asking for other `dimensions`, gives other numbers."""
        described = f"{config.endpoint}\0{config.request_template}\0{config.response_path}"
        digest = hashlib.sha256(described.encode()).hexdigest()[:12]
        return f"{config.host}/{template_model(config.request_template) or '-'}#{digest}"


def remote_providers(policy: OutboundPolicy, max_batch: int) -> RemoteProviders:
    """One per process: the circuit breakers live in its provider client."""
    return RemoteProviders(policy, ProviderClient(OutboundClient(policy), max_batch=max_batch))
