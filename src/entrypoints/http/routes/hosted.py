"""The hosted API under /v1: embedding through the caller's cache (and the shared pool), the caller's cache stats
and usage, and an unauthenticated health check. A metered caller (an account's key) is admitted against its tier's
quotas first, and every answer carries its rate-limit headers."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from domain.model import InputType, TextItem
from domain.use_cases import EmbedBatch, EmbedOne, GetCacheStats, GetHealth, GetUsage
from entrypoints.http.deps import CallerDep, account_of_either, headers_for, metered, use
from entrypoints.http.json_body import StrictJSONRoute
from entrypoints.http.responses import VectorJSONResponse
from entrypoints.http.schemas.common import error_responses
from entrypoints.http.schemas.hosted import (
    CacheStatsResponse,
    UsageResponse,
    V1EmbedBatchRequest,
    V1EmbedBatchResponse,
    V1EmbedRequest,
    V1EmbedResponse,
    V1HealthResponse,
    render_batch,
    render_one,
    render_stats,
    render_usage,
)

log = logging.getLogger("entrypoints.http.app")
ERRORS = error_responses(400, 401, 413, 422, 429, 500, 503, 504)

router = APIRouter(prefix="/v1", route_class=StrictJSONRoute, tags=["hosted"])


@router.post("/embed", response_model=V1EmbedResponse, responses=ERRORS)
async def v1_embed(
    request: Request, body: V1EmbedRequest, caller: CallerDep, use_case: Annotated[EmbedOne, use(EmbedOne)]
) -> JSONResponse:
    one_text = [TextItem(id=None, text=body.text)]
    async with metered(request, caller, 1, lambda: use_case.check(one_text, body.model, body.encoding_format, caller)):
        result = await use_case.execute(
            body.text, body.model, body.encoding_format, caller, body.public, InputType(body.input_type)
        )
    log.debug("embedded 1 text (%d chars) for %s", len(body.text), caller.tenant)
    return VectorJSONResponse(render_one(result), headers=headers_for(request, result))


@router.post("/embed/batch", response_model=V1EmbedBatchResponse, responses=ERRORS)
async def v1_embed_batch(
    request: Request, body: V1EmbedBatchRequest, caller: CallerDep, use_case: Annotated[EmbedBatch, use(EmbedBatch)]
) -> JSONResponse:
    items = [TextItem(id=None, text=text) for text in body.texts]
    async with metered(
        request, caller, len(items), lambda: use_case.check(items, body.model, body.encoding_format, caller)
    ):
        result = await use_case.execute(
            items, body.model, body.encoding_format, caller, body.public, InputType(body.input_type)
        )
    log.debug("embedded %d texts (%d chars) for %s", len(items), sum(len(t) for t in body.texts), caller.tenant)
    return VectorJSONResponse(render_batch(result), headers=headers_for(request, result))


@router.get("/stats", response_model=CacheStatsResponse, responses=error_responses(401, 429, 500, 503))
async def v1_stats(
    request: Request, caller: CallerDep, use_case: Annotated[GetCacheStats, use(GetCacheStats)]
) -> JSONResponse:
    async with metered(request, caller, 0):
        report = await use_case.execute(caller)
    return JSONResponse(render_stats(report), headers=headers_for(request))


@router.get("/usage", response_model=UsageResponse, responses=error_responses(400, 401, 422, 429, 500, 503))
async def v1_usage(
    request: Request,
    account_id: Annotated[str, Depends(account_of_either)],
    use_case: Annotated[GetUsage, use(GetUsage)],
    days: Annotated[int, Query(ge=1, le=366, description="UTC days back, today included")] = 7,
) -> JSONResponse:
    report = await use_case.execute(account_id, days)
    return JSONResponse(render_usage(report, days), headers=headers_for(request))


@router.get("/health", response_model=V1HealthResponse)
async def v1_health(request: Request, use_case: Annotated[GetHealth, use(GetHealth)]) -> V1HealthResponse:
    return V1HealthResponse(status=use_case.execute().status, version=request.app.version)
