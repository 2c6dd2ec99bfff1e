"""GET /metrics: Prometheus's text exposition of the service's metrics (included only with METRICS_ENABLED=true).
With METRICS_KEY set, the scraper must send it as a bearer token."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response

from domain.errors import Unauthenticated
from entrypoints.container import secret
from entrypoints.http.deps import bearer, container_of


async def scraper(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    """Without METRICS_KEY anyone may read the metrics (like /health); with it, only a bearer of that key."""
    expected = secret(container_of(request).config.metrics_key())
    if expected is None:
        return
    presented = bearer(authorization) or ""
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise Unauthenticated("missing or invalid metrics key; send 'Authorization: Bearer <METRICS_KEY>'.")


router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(scraper)])
async def metrics(request: Request) -> Response:
    exported = container_of(request).metrics()
    return Response(exported.exposition(), media_type=exported.content_type)
