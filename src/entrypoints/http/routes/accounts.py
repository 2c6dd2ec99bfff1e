"""Accounts and keys of the hosted mode: signup and login (no credentials needed), and an account's API keys
(a session token from login, never an API key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from domain.use_cases import CreateKey, ListKeys, LogIn, RevokeKey, SignUp
from entrypoints.http.deps import AccountDep, headers_for, use
from entrypoints.http.json_body import StrictJSONRoute
from entrypoints.http.schemas.accounts import (
    Credentials,
    KeyList,
    LoginRequest,
    LoginResponse,
    NewKeyResponse,
    RevokedResponse,
    SignupResponse,
    render_keys,
    render_login,
    render_new_key,
    render_revoked,
    render_signup,
)
from entrypoints.http.schemas.common import error_responses

router = APIRouter(prefix="/v1", route_class=StrictJSONRoute, tags=["accounts"])


@router.post(
    "/auth/signup", status_code=201, response_model=SignupResponse, responses=error_responses(400, 403, 409, 422, 503)
)
async def signup(body: Credentials, use_case: Annotated[SignUp, use(SignUp)]) -> JSONResponse:
    created = await use_case.execute(body.email, body.password)
    return JSONResponse(render_signup(created), 201)


@router.post("/auth/login", response_model=LoginResponse, responses=error_responses(401, 422, 429, 503))
async def login(body: LoginRequest, use_case: Annotated[LogIn, use(LogIn)]) -> JSONResponse:
    token, expires_in = await use_case.execute(body.email, body.password)
    return JSONResponse(render_login(token, expires_in))


@router.post("/keys", status_code=201, response_model=NewKeyResponse, responses=error_responses(401, 429, 503))
async def create_key(
    request: Request, account: AccountDep, use_case: Annotated[CreateKey, use(CreateKey)]
) -> JSONResponse:
    key, record = await use_case.execute(account)
    return JSONResponse(render_new_key(key, record), 201, headers=headers_for(request))


@router.get("/keys", response_model=KeyList, responses=error_responses(401, 429, 503))
async def list_keys(
    request: Request, account: AccountDep, use_case: Annotated[ListKeys, use(ListKeys)]
) -> JSONResponse:
    return JSONResponse(render_keys(await use_case.execute(account)), headers=headers_for(request))


@router.delete("/keys/{prefix}", response_model=RevokedResponse, responses=error_responses(401, 404, 422, 429, 503))
async def revoke_key(
    request: Request,
    account: AccountDep,
    use_case: Annotated[RevokeKey, use(RevokeKey)],
    prefix: Annotated[str, Path(max_length=64, description="the key's prefix, as GET /v1/keys lists it")],
) -> JSONResponse:
    await use_case.execute(account, prefix)
    return JSONResponse(render_revoked(), headers=headers_for(request))
