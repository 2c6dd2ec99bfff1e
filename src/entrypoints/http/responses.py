"""JSON responses carrying vectors: orjson writes float32 numpy arrays natively, with no per-float Python work."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse


class VectorJSONResponse(JSONResponse):
    """Renders numpy float32 arrays as JSON numbers, each the shortest decimal that reads back as the same float32."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
