"""Operations: GET /health (no key: orchestrators probe it) and GET /metadata (the served model and limits)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from domain.use_cases import GetHealth, GetMetadata
from entrypoints.http.deps import counted, headers_for, use
from entrypoints.http.json_body import StrictJSONRoute
from entrypoints.http.schemas.common import error_responses
from entrypoints.http.schemas.operations import HealthResponse, MetadataResponse, render_health, render_metadata

router = APIRouter(route_class=StrictJSONRoute, tags=["operations"])


@router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def health(use_case: Annotated[GetHealth, use(GetHealth)]) -> JSONResponse:
    report = use_case.execute()
    return JSONResponse(render_health(report), 200 if report.ready else 503)


@router.get(
    "/metadata",
    response_model=MetadataResponse,
    responses=error_responses(401, 429, 500, 503),
    dependencies=[Depends(counted)],
)
async def metadata(request: Request, use_case: Annotated[GetMetadata, use(GetMetadata)]) -> JSONResponse:
    default, models, limits = use_case.execute()
    return JSONResponse(render_metadata(default, models, limits), headers=headers_for(request))
