"""An account's bring-your-own-key provider (hosted mode): register or replace it, read it back without its key,
remove it. An account's API key or a session token from login both work; each request counts against the
account's per-minute limit."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from domain.use_cases import DeleteProvider, GetProvider, SetProvider
from entrypoints.http.deps import account_of_either, headers_for, use
from entrypoints.http.json_body import StrictJSONRoute
from entrypoints.http.schemas.common import error_responses
from entrypoints.http.schemas.providers import (
    ProviderCreated,
    ProviderDeleted,
    ProviderRequest,
    ProviderResponse,
    render_created,
    render_deleted,
    render_provider,
)

router = APIRouter(prefix="/v1", route_class=StrictJSONRoute, tags=["providers"])
AccountId = Annotated[str, Depends(account_of_either)]


@router.post(
    "/provider", status_code=201, response_model=ProviderCreated, responses=error_responses(400, 401, 422, 429, 503)
)
async def set_provider(
    request: Request, body: ProviderRequest, account_id: AccountId, use_case: Annotated[SetProvider, use(SetProvider)]
) -> JSONResponse:
    provider = await use_case.execute(account_id, body.config(), body.api_key.get_secret_value())
    return JSONResponse(render_created(provider), 201, headers=headers_for(request))


@router.get("/provider", response_model=ProviderResponse, responses=error_responses(401, 404, 429, 503))
async def get_provider(
    request: Request, account_id: AccountId, use_case: Annotated[GetProvider, use(GetProvider)]
) -> JSONResponse:
    return JSONResponse(render_provider(await use_case.execute(account_id)), headers=headers_for(request))


@router.delete("/provider", response_model=ProviderDeleted, responses=error_responses(401, 404, 429, 503))
async def delete_provider(
    request: Request, account_id: AccountId, use_case: Annotated[DeleteProvider, use(DeleteProvider)]
) -> JSONResponse:
    await use_case.execute(account_id)
    return JSONResponse(render_deleted(), headers=headers_for(request))
