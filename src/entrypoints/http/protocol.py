"""The HTTP/1.1 connection protocol the server runs: uvicorn's httptools protocol plus the limits it lacks.

uvicorn's httptools protocol accepts request heads of any size (the parser buffers a 32 MB header and slows down as
it grows) and waits forever for a slow request line, headers or body. Here, per connection:
- the request line and headers together may take at most `max_head_bytes`, counted as the bytes arrive (before
  the parser buffers them): more is answered 431 and the connection closed;
- they must arrive within `head_timeout_s` of the connection opening (or of the request's first byte on a
  kept-alive connection), else 408 and close; idle kept-alive connections are closed by uvicorn's own keep-alive
  timeout;
- the body must arrive within `body_timeout_s` of the end of the headers, else 408 and close;
- a request the parser rejects (a negative Content-Length, say) gets a JSON 400 instead of uvicorn's plain text.

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

from entrypoints.http.errors import error_body
from entrypoints.settings import Settings

log = logging.getLogger("entrypoints.http.access")

HEAD_END = b"\r\n\r\n"


@dataclass(frozen=True)
class ConnectionLimits:
    max_head_bytes: int = 32768
    head_timeout_s: float = 10.0
    body_timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            max_head_bytes=settings.max_header_bytes,
            head_timeout_s=settings.client_header_timeout_seconds,
            body_timeout_s=settings.client_body_timeout_seconds,
        )


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
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # --- connection -------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(self._limits.head_timeout_s, self._head_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_bytes is not None:
            window = self._tail + data
            end = window.find(HEAD_END)
            counted = len(data) if end < 0 else max(0, end + len(HEAD_END) - len(self._tail))
            self._head_bytes += counted
            if self._head_bytes > self._limits.max_head_bytes:
                self._refuse(
                    431,
                    "headers_too_large",
                    f"the request line and headers exceed {self._limits.max_head_bytes} bytes.",
                )
                return
            self._tail = window[-(len(HEAD_END) - 1) :]
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "invalid_http", "malformed HTTP/1.1 request.")

    # --- parser callbacks -------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # a later request on a kept-alive connection: its head starts now
            self._head_timer = self.loop.call_later(self._limits.head_timeout_s, self._head_too_slow)

    def on_headers_complete(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._head_bytes = None
        super().on_headers_complete()
        self._body_timer = self.loop.call_later(self._limits.body_timeout_s, self._body_too_slow)

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._head_bytes, self._tail = 0, b""
        super().on_message_complete()

    # --- refusals ---------------------------------------------------------------------------------------------

    def _head_too_slow(self) -> None:
        self._head_timer = None
        limit = self._limits.head_timeout_s
        self._refuse(408, "request_timeout", f"the request line and headers took over {limit:g} s.")

    def _body_too_slow(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app sees the client gone: its receive() ends, its sends are dropped
            cycle.message_event.set()
        self._refuse(408, "request_timeout", f"the request body took over {self._limits.body_timeout_s:g} s.")

    def _refuse(self, status: int, kind: str, message: str) -> None:
        """Answer with a JSON error (unless another response is on the wire already) and close the connection."""
        if self.transport.is_closing():
            return
        cycle = self.cycle
        answering = cycle is not None and cycle.response_started and not cycle.response_complete
        if not answering:
            body = orjson.dumps(error_body(kind, message))
            head = [STATUS_LINE[status]]
            head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
            head += [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode() + b"\r\n",
                b"connection: close\r\n\r\n",
            ]
            self.transport.write(b"".join(head) + body)
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        log.info("%s: %d %s (connection closed)", client, status, message)
        self.transport.close()
