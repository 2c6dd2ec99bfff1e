"""ASGI middleware: request-body size cap on the bytes actually received, cancelling the request's work when its
client disconnects, access logging, and request metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Sequence
from typing import Protocol

from starlette.routing import BaseRoute, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from domain.errors import PayloadTooLarge, ShuttingDown
from entrypoints.http.errors import domain_error_response

log = logging.getLogger("entrypoints.http.access")


KEY_PREFIX_CHARS = 12  # what names an API key in listings: not a secret
_CREDENTIAL_LIKE = re.compile(r"(vec_[0-9A-Za-z]{8})[^/]+|[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,}")


def logged_path(scope: Scope) -> str:
    """The path as the client sent it (still percent-encoded, so a %0a cannot start a forged log line), with any
    other byte outside printable ASCII escaped, and anything shaped like a credential cut: an API key pasted where
    its prefix belongs (DELETE /v1/keys/vec_...) keeps only its 12-character prefix, a JWT is dropped."""
    raw = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    path = "".join(chr(b) if 0x21 <= b <= 0x7E else f"\\x{b:02x}" for b in raw)
    return _CREDENTIAL_LIKE.sub(lambda m: f"{m.group(1)}..." if m.group(1) else "<token>", path)


class BodySizeLimit:
    """Reads the body up to `max_bytes` before the app sees it; anything larger is answered 413.

    Once the body is in, it watches the connection: when the client goes away before the response is complete,
    the request's task is cancelled, so its queued texts are dropped instead of computed for nobody.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await domain_error_response(PayloadTooLarge(self.max_bytes), scope=scope)(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await domain_error_response(PayloadTooLarge(self.max_bytes), scope=scope)(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        await self._run_cancelling_on_disconnect(scope, receive, send, b"".join(chunks))

    async def _run_cancelling_on_disconnect(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        disconnected = asyncio.Event()
        delivered = False
        responded = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def tracking_send(message: Message) -> None:
            nonlocal responded
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                responded = True
            await send(message)

        async def call_app() -> None:
            await self.app(scope, replay, tracking_send)

        handler = asyncio.create_task(call_app())

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()
            if not responded and not handler.done():
                log.info("%s %s client disconnected; cancelling its work", scope["method"], logged_path(scope))
                handler.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await handler
        except asyncio.CancelledError:
            handler.cancel()
            current = asyncio.current_task()
            if not disconnected.is_set() or (current is not None and current.cancelling()):
                raise
        finally:
            watcher.cancel()


class RequestObserver(Protocol):
    def request(self, route: str, method: str, status: int, seconds: float) -> None: ...


UNMATCHED = "unmatched"
UNCOUNTED_ROUTES = frozenset({"/metrics"})


class AccessLog:
    """One line per request: method, path, status, latency. Never headers or bodies (keys, texts).

    With `metrics` (METRICS_ENABLED), every request is also counted and timed by the path template of its route
    (`/v1/keys/{prefix}`, never the path itself: bounded label values), "unmatched" when no route takes it, its
    method and status. A request answered before routing (413 for its body) is matched here; GET /metrics itself
    is not counted."""

    def __init__(self, app: ASGIApp, metrics: RequestObserver | None = None, routes: Sequence[BaseRoute] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # the app's list: routers included later are in it
        self._patterns: list[tuple[re.Pattern[str], str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        except Exception:
            status = status or 500  # the server error handler outside answers it
            raise
        finally:
            status = status or 499  # nothing was sent: the client went away first
            elapsed_s = time.perf_counter() - started
            log.info("%s %s %d %.1f ms", scope["method"], logged_path(scope), status, elapsed_s * 1000)
            if self.metrics is not None and (route := self._template(scope)) not in UNCOUNTED_ROUTES:
                self.metrics.request(route, scope["method"], status, elapsed_s)

    def _template(self, scope: Scope) -> str:
        """The route's path as its label: `/v1/models/{model}`, the converter (`:path`) left out."""
        path = getattr(scope.get("route"), "path_format", None)
        if isinstance(path, str):
            return path
        # answered before routing (413 for its body), or no route takes it (404)
        if self._patterns is None:
            compiled = [compile_path(template) for template in route_templates(self.routes)]
            self._patterns = [(pattern, template) for pattern, template, _ in compiled]
        return next((template for pattern, template in self._patterns if pattern.match(scope["path"])), UNMATCHED)


def route_templates(routes: Sequence[BaseRoute]) -> list[str]:
    """The path templates of the app's routes, those of included routers too."""
    try:
        from fastapi.routing import iter_route_contexts  # FastAPI >= 0.16x wraps each included router
    except ImportError:
        return [path for route in routes if isinstance(path := getattr(route, "path", None), str)]
    return [context.path for context in iter_route_contexts(routes) if context.path]


class Draining:
    """Counts the requests in flight; once `drain.start()` has been called (SIGTERM), answers every new request 503
    shutting_down (Retry-After: 1, Connection: close; /health included, so a load balancer stops sending here)
    while those in flight finish."""

    def __init__(self, app: ASGIApp, drain: DrainState) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            await _discard_body(receive, DRAINING_BODY_READ_S)
            await domain_error_response(ShuttingDown(), scope=scope)(scope, receive, send)
            return
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1


DRAINING_BODY_READ_S = 1.0


async def _discard_body(receive: Receive, within_s: float) -> None:
    """Read what the client is still sending, and drop it, for at most `within_s`: an answer sent while the client
    is still sending, on a connection then closed, would reach it as a reset, not as the answer."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within_s):
            while True:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return


class DrainState:
    """Whether this process drains, and how many requests it holds (changed on the event loop only)."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self.since = 0.0

    def start(self) -> None:
        if not self.draining:
            self.draining, self.since = True, time.monotonic()

    async def drained(self, limit_s: float, poll_s: float = 0.05) -> bool:
        """Wait until no request is in flight (True), or `limit_s` after the drain began (False)."""
        while self.in_flight and time.monotonic() - self.since < limit_s:
            await asyncio.sleep(poll_s)
        return not self.in_flight
