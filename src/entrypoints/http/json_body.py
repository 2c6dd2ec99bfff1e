"""Request bodies parsed with orjson: strict UTF-8 JSON (RFC 8259), and faster than json.loads.

Python's json module accepts what an embedding request must not carry: unpaired surrogate escapes ("\\ud800", not
text any tokenizer can encode, nor any JSON encoder write back), NaN and Infinity, and any byte encoding it can
guess. orjson refuses them as malformed JSON: 422 with the parser's reason, after authentication (a caller without
a valid key gets 401 whatever it sent), before a route or the model sees the body.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute

UTF8_BOM = b"\xef\xbb\xbf"  # RFC 8259 lets parsers ignore one
JSON_ERROR = "embedding_service.json_error"  # in the request scope: where and why the body is not JSON


class InvalidJSON:
    """Stands in for a body that is not JSON until the route's dependencies (authentication first) have run: the
    body then fails validation, and the error handler reports the parser's reason (JSON_ERROR) instead."""


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = orjson.loads((await self.body()).removeprefix(UTF8_BOM))
            except orjson.JSONDecodeError as exc:
                self.scope[JSON_ERROR] = (exc.pos, exc.msg)
                self._json = InvalidJSON()
        return self._json


class StrictJSONRoute(APIRoute):
    """An APIRoute whose body is parsed by StrictJSONRequest (orjson.JSONDecodeError is a json.JSONDecodeError, so
    FastAPI reports it as the usual json_invalid validation error)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict
