"""Dependencies of the routes: the container's use cases (one generic getter), the caller behind an API key, the
account behind a session token, and metering a caller's request (quota check, rate-limit headers on every answer,
texts given back when the request fails).

Dependencies are coroutines: FastAPI would run plain functions in a worker thread, a thread hop per dependency."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Request

from domain.errors import DomainError, RateLimited, Unauthenticated
from domain.model import Account, Admission, Caller
from domain.use_cases import AuthenticateAccount, AuthenticateCaller, MeterRequests
from domain.use_cases.embedding import EmbeddingResult
from domain.use_cases.usage import REQUESTS, SESSIONS
from entrypoints.container import Container, use_case

T = TypeVar("T")


def container_of(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


def use(kind: type[T]) -> Any:
    """`Depends(use(EmbedOne))`: the use case of that class, built by the container."""

    async def dependency(request: Request) -> T:
        return use_case(container_of(request), kind)

    return Depends(dependency)


def bearer(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


async def authenticated(request: Request, authorization: Annotated[str | None, Header()] = None) -> Caller:
    """The caller behind an API key (an account's key, or a static key): never a session token."""
    caller = await use_case(container_of(request), AuthenticateCaller).execute(bearer(authorization))
    request.state.caller = caller
    return caller


async def session(request: Request, authorization: Annotated[str | None, Header()] = None) -> Account:
    """The account behind a session token from POST /v1/auth/login: never an API key. The request counts against
    the account's per-minute limit in a window of its own (SESSIONS): requests made with its API keys, a leaked one's
    included, never keep the owner from listing, creating or revoking keys."""
    account = await use_case(container_of(request), AuthenticateAccount).execute(bearer(authorization))
    caller = Caller(account_id=account.id, key_id=None, tier=account.tier, tenant=account.id)
    request.state.caller, request.state.counter = caller, SESSIONS
    await _admit(request, caller, 0)
    return account


async def counted(request: Request, caller: Annotated[Caller, Depends(authenticated)]) -> Caller:
    """An API key's caller whose request carries no texts but counts against the per-minute limit."""
    await _admit(request, caller, 0)
    return caller


CallerDep = Annotated[Caller, Depends(authenticated)]
AccountDep = Annotated[Account, Depends(session)]


async def account_of_either(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    """The account id behind a session token or an account's API key (GET /v1/usage takes either)."""
    presented = bearer(authorization)
    if presented and presented.count(".") == 2:
        return (await session(request, authorization)).id
    caller = await authenticated(request, authorization)
    if caller.account_id is None:
        raise Unauthenticated("usage is kept for accounts; send an account's API key or session token.")
    await _admit(request, caller, 0)
    return caller.account_id


def rate_limit_headers(admission: Admission) -> dict[str, str]:
    """IETF draft RateLimit-Policy / RateLimit (one policy per window: "day" texts, "minute" requests) and OpenAI's
    x-ratelimit-*-requests (the minute window)."""
    windows = admission.windows
    policy = ", ".join(f'"{w.charge.name}";q={w.charge.limit};w={w.charge.window_s}' for w in windows)
    state = ", ".join(f'"{w.charge.name}";r={w.remaining};t={_whole(w.reset_s)}' for w in windows)
    headers = {"RateLimit-Policy": policy, "RateLimit": state}
    minute = next((w for w in windows if w.charge.name == "minute"), None)
    if minute is not None:
        headers["x-ratelimit-limit-requests"] = str(minute.charge.limit)
        headers["x-ratelimit-remaining-requests"] = str(minute.remaining)
        headers["x-ratelimit-reset-requests"] = f"{_whole(minute.reset_s)}s"
    return headers


def _whole(seconds: float) -> int:
    return max(0, int(seconds + 0.999))


async def _admit(request: Request, caller: Caller, texts: int) -> Any:
    meter = use_case(container_of(request), MeterRequests)
    try:
        metered = await meter.admit(caller, texts, getattr(request.state, "counter", REQUESTS))
    except RateLimited as exc:
        container_of(request).metrics().rate_limited(exc.window)
        if exc.admission is not None:
            request.state.headers = rate_limit_headers(exc.admission)
        raise
    if metered is not None:
        request.state.headers = rate_limit_headers(metered.admission)
        request.state.admitted = True
    return metered


async def count_refused_request(request: Request) -> None:
    """A metered caller's request refused for its input (400, 413, 422) counts as a request in the minute, not its
    texts; RateLimited when that goes over the limit."""
    caller = getattr(request.state, "caller", None)
    if caller is not None and caller.metered and not getattr(request.state, "admitted", False):
        await _admit(request, caller, 0)  # (a dependency may have counted it already: not twice)


@asynccontextmanager
async def metered(
    request: Request, caller: Caller, texts: int, check: Callable[[], None] | None = None
) -> AsyncIterator[None]:
    """Check the inputs (`check`: a request that could never succeed is refused for what it is, its texts not
    counted), then admit the request (429 when a limit of the caller's tier would be exceeded: nothing consumed);
    if it then fails, its texts are given back and the headers say so."""
    if check is not None:
        try:
            check()
        except DomainError:
            await count_refused_request(request)  # RateLimited instead, once over the minute's limit
            raise
    ticket = await _admit(request, caller, texts)
    try:
        yield
    except BaseException:
        after = await use_case(container_of(request), MeterRequests).refund(ticket)
        if after is not None:
            request.state.headers = rate_limit_headers(after)
        raise


def headers_for(request: Request, result: EmbeddingResult | None = None) -> dict[str, str]:
    """What an answer carries besides its body: rate-limit headers of a metered caller; what computed its vectors
    (X-Embedding-Source: cache, local or provider); with a cache configured, how many inputs, and which (0-based,
    in request order), came from it."""
    headers = dict(getattr(request.state, "headers", None) or {})
    if result is not None:
        headers[SOURCE_HEADER] = result.served_by
    if result is not None and result.cache_used:
        hits = result.cache_hits
        headers[CACHE_HITS_HEADER] = str(len(hits))
        headers[CACHE_HIT_INDEXES_HEADER] = ",".join(map(str, hits))
    return headers


SOURCE_HEADER = "X-Embedding-Source"  # cache (every input), local (this server's model) or provider (the caller's)
CACHE_HITS_HEADER = "X-Cache-Hits"
CACHE_HIT_INDEXES_HEADER = "X-Cache-Hit-Indexes"
