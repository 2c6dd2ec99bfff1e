"""The HTTP/1.1 connection protocol the server runs: uvicorn's httptools protocol plus the limits it lacks.

uvicorn's httptools protocol accepts request heads of any size (the parser buffers a 32 MB header and slows down as
it grows), merges chunked-body trailers into the request's headers, and waits forever for a slow request line,
headers or body. Here, per connection:
- the request line and headers together may take at most `max_head_bytes`: counted as the bytes arrive (before the
  parser buffers them), and again exactly once parsed; more is answered 431 and the connection closed;
- they must arrive within `head_timeout_s` of the connection opening, or of the first byte of a later request on a
  kept-alive connection (a bare CRLF counts), else 408 and close; idle kept-alive connections are closed by
  uvicorn's own keep-alive timeout;
- the body must arrive within `body_timeout_s` of the end of the headers, else 408 and close; the raw bytes of a
  body (chunk framing and trailers included) may take at most twice `max_body_bytes` plus `max_head_bytes`, else
  413 and close; trailer fields are dropped, never added to the request's headers;
- a request the parser rejects (a negative Content-Length, say) gets a JSON 400 instead of uvicorn's plain text;
- a refusal never answers an earlier pipelined request still being answered: it is sent after that answer, then the
  connection closes; once a request was answered early (413 before its body was read), the rest of its body is
  discarded silently until a limit closes the connection.

`embedding-service serve` runs it; the uvicorn command line takes it with
`--http entrypoints.http.protocol:GuardedHttpToolsProtocol` (or UVICORN_HTTP, which the image sets).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from domain.errors import PayloadTooLarge
from entrypoints.http.errors import error_body
from entrypoints.settings import Settings

log = logging.getLogger("entrypoints.http.access")


def head_end(window: bytes) -> int:
    """Where the request head in `window` ends (just past its blank line), or -1. A bare-LF blank line counts too:
    the parser rejects such a head (400), and what follows it must not be counted as head (431)."""
    ends = [at + len(mark) for mark in (b"\r\n\r\n", b"\n\n") if (at := window.find(mark)) >= 0]
    return min(ends, default=-1)


@dataclass(frozen=True)
class ConnectionLimits:
    max_head_bytes: int = 32768
    head_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_body_bytes: int = 1_048_576

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            max_head_bytes=settings.max_header_bytes,
            head_timeout_s=settings.client_header_timeout_seconds,
            body_timeout_s=settings.client_body_timeout_seconds,
            max_body_bytes=settings.max_body_bytes,
        )

    @property
    def max_raw_body_bytes(self) -> int:
        """Bytes a body may take on the wire: the payload cap twice over (chunk framing) plus trailers."""
        return 2 * self.max_body_bytes + self.max_head_bytes


@functools.cache
def limits_from_environment() -> ConnectionLimits:
    """The limits of this process's settings (environment and .env), read once: what `create_app()` reads too."""
    return ConnectionLimits.from_settings(Settings())


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[ConnectionLimits | None] = None  # None: from the environment, like the app's settings

    @classmethod
    def with_limits(cls, limits: ConnectionLimits) -> type[GuardedHttpToolsProtocol]:
        """This protocol with fixed limits (a server started in-process with explicit settings)."""
        return type(cls.__name__, (cls,), {"limits": limits})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = self.limits or limits_from_environment()
        self._head_bytes: int | None = 0  # bytes of the request head so far; None while a body is read
        self._tail = b""  # the last bytes of the head so far: its end may straddle two reads
        self._body_bytes = 0  # raw bytes read since the head ended
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str, str] | None = None  # decided inside a parser callback, sent after it
        self._deferred: tuple[int, str, str, dict[str, object]] | None = None  # until an earlier answer is out

    # --- connection -------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_bytes is not None:
            self._start_head_timer()  # any byte starts the clock, even a CRLF the parser skips
            window = self._tail + data
            end = head_end(window)
            counted = len(data) if end < 0 else max(0, end - len(self._tail))
            self._head_bytes += counted
            if self._head_bytes > self._limits.max_head_bytes:
                self._refuse(*self._head_too_large())
                return
            self._tail = window[-3:]
        else:
            self._body_bytes += len(data)
            if self._body_bytes > self._limits.max_raw_body_bytes:
                too_large = PayloadTooLarge(self._limits.max_body_bytes)  # the body the app would answer
                self._refuse(413, "payload_too_large", too_large.message, **too_large.details)
                return
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        refusal, self._refusal = self._refusal, None
        self._refuse(*(refusal or (400, "invalid_http", "malformed HTTP/1.1 request.")))

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._deferred is not None:
            (status, kind, message, details), self._deferred = self._deferred, None
            self._refuse(status, kind, message, **details)
        elif self._head_bytes is not None and self._head_timer is not None:
            self._unset_keepalive_if_required()  # a next request's head is arriving: the head timer rules

    # --- parser callbacks -------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_head_timer()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_bytes is None:
            return  # a chunked body's trailer: never a request header (an Authorization trailer must not count)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        parsed = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if parsed > self._limits.max_head_bytes:  # the streaming count misses heads that start mid-read
            self._refusal = self._head_too_large()
            raise ValueError("request head too large")  # stops the parser; answered in send_400_response
        self._head_bytes, self._body_bytes = None, 0
        super().on_headers_complete()
        self._body_timer = self.loop.call_later(self._limits.body_timeout_s, self._body_too_slow)

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._head_bytes, self._tail = 0, b""
        super().on_message_complete()

    # --- refusals ---------------------------------------------------------------------------------------------

    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._limits.head_timeout_s, self._head_too_slow)

    def _head_too_large(self) -> tuple[int, str, str]:
        return 431, "headers_too_large", f"the request line and headers exceed {self._limits.max_head_bytes} bytes."

    def _head_too_slow(self) -> None:
        self._head_timer = None
        limit = self._limits.head_timeout_s
        self._refuse(408, "request_timeout", f"the request line and headers took over {limit:g} s.")

    def _body_too_slow(self) -> None:
        self._body_timer = None
        self._refuse(408, "request_timeout", f"the request body took over {self._limits.body_timeout_s:g} s.")

    def _refuse(self, status: int, kind: str, message: str, **details: object) -> None:
        """Refuse the request being read: answer with a JSON error and close the connection, except where that
        would garble another answer (see the module docstring)."""
        if self.transport.is_closing():
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        cycle = self.cycle
        pending = cycle is not None and not cycle.response_complete
        if pending and self._head_bytes is not None:  # an earlier request is still being answered
            self._deferred = (status, kind, message, details)  # sent, and the connection closed, once that is out
            self.flow.pause_reading()
            return
        if cycle is not None and self._head_bytes is None:  # the request whose body is being read
            if cycle.response_started:  # answered (early) or answering already: nothing more to send
                log.info("%s: %d %s (connection closed)", client, status, message)
                self.transport.close()
                return
            cycle.disconnected = True  # the app sees the client gone: its receive() ends, its sends are dropped
            cycle.message_event.set()
        body = orjson.dumps(error_body(kind, message, **details))
        head = [STATUS_LINE[status]]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        log.info("%s: %d %s (connection closed)", client, status, message)
        self.transport.close()
