"""Request bodies parsed with orjson: strict UTF-8 JSON (RFC 8259), and faster than json.loads.

Python's json module accepts what an embedding request must not carry: unpaired surrogate escapes ("\\ud800", not
text any tokenizer can encode, nor any JSON encoder write back), NaN and Infinity, and any byte encoding it can
guess. orjson refuses them as malformed JSON, so FastAPI answers 422 before a route or the model sees the body.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute

UTF8_BOM = b"\xef\xbb\xbf"  # RFC 8259 lets parsers ignore one


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads((await self.body()).removeprefix(UTF8_BOM))
        return self._json


class StrictJSONRoute(APIRoute):
    """An APIRoute whose body is parsed by StrictJSONRequest (orjson.JSONDecodeError is a json.JSONDecodeError, so
    FastAPI reports it as the usual json_invalid validation error)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict
