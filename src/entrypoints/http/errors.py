"""The one table mapping domain errors to HTTP: each row gives the status, the wire type (explicit, never derived
from a class name) and the headers the answer carries. Also the JSON error bodies, and the handlers for errors that
do not come from the domain (invalid bodies, unknown routes, anything unexpected).

Two bodies: the service's own `{"error": {"type", "message", ...details}}`, and on OpenAI's routes (OPENAI_PATHS)
OpenAI's envelope `{"error": {"message", "type", "param", "code"}}` with OpenAI's status codes, its `code` being the
row's wire type unless OPENAI_ROWS says otherwise."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from domain import errors
from entrypoints.http.deps import count_refused_request, headers_for
from entrypoints.http.json_body import JSON_ERROR

log = logging.getLogger(__name__)

Headers = Callable[[Any], dict[str, str]]


def _none(_: Any) -> dict[str, str]:
    return {}


def _bearer(_: Any) -> dict[str, str]:
    return {"WWW-Authenticate": "Bearer"}


def _retry_after(exc: Any) -> dict[str, str]:
    return {"Retry-After": str(exc.retry_after_s)}


def _retry_in_5(_: Any) -> dict[str, str]:
    return {"Retry-After": "5"}


def _retry_now(_: Any) -> dict[str, str]:
    return {"Retry-After": "1", "Connection": "close"}  # to another replica: this connection ends here


@dataclass(frozen=True)
class ErrorRow:
    status: int
    type: str
    headers: Headers = field(default=_none)


ERROR_TABLE: dict[type[errors.DomainError], ErrorRow] = {
    errors.InvalidInput: ErrorRow(400, "invalid_input"),
    errors.InputTooLong: ErrorRow(400, "input_too_long"),
    errors.UnknownModel: ErrorRow(400, "unknown_model"),
    errors.UnsupportedEncodingFormat: ErrorRow(400, "unsupported_encoding_format"),
    errors.UnsupportedDimensions: ErrorRow(400, "unsupported_dimensions"),
    errors.Unauthenticated: ErrorRow(401, "unauthenticated", _bearer),
    errors.InvalidCredentials: ErrorRow(401, "invalid_credentials", _bearer),
    errors.SessionRequired: ErrorRow(401, "unauthenticated", _bearer),
    errors.SignupClosed: ErrorRow(403, "signup_closed"),
    errors.KeyNotFound: ErrorRow(404, "not_found"),
    errors.UnknownAccount: ErrorRow(404, "not_found"),
    errors.EmailTaken: ErrorRow(409, "email_taken"),
    errors.BatchTooLarge: ErrorRow(413, "batch_too_large"),
    errors.PayloadTooLarge: ErrorRow(413, "payload_too_large"),
    errors.RequestTooLarge: ErrorRow(413, "request_too_large"),
    errors.RateLimited: ErrorRow(429, "rate_limited", _retry_after),
    errors.ModelNotReady: ErrorRow(503, "model_not_ready", _retry_in_5),
    errors.Overloaded: ErrorRow(503, "overloaded", _retry_after),
    errors.ShuttingDown: ErrorRow(503, "shutting_down", _retry_now),
    errors.BackendFailure: ErrorRow(503, "backend_failure"),
    errors.ModelIntegrityError: ErrorRow(503, "model_integrity_error"),
    errors.BackendDisagrees: ErrorRow(503, "backend_disagrees"),
    errors.CacheUnavailable: ErrorRow(503, "cache_unavailable", _retry_in_5),
    errors.AccountsUnavailable: ErrorRow(503, "accounts_unavailable", _retry_in_5),
    errors.Timeout: ErrorRow(504, "timeout"),
    errors.EndpointRefused: ErrorRow(400, "endpoint_refused"),
    errors.ByokRequired: ErrorRow(400, "byok_required"),
    errors.ProviderNotFound: ErrorRow(404, "not_found"),
    errors.ProviderRejected: ErrorRow(502, "provider_rejected"),
    errors.ProviderBadResponse: ErrorRow(502, "provider_bad_response"),
    errors.ProviderUnavailable: ErrorRow(502, "provider_unavailable", _retry_after),
    errors.ProviderTimeout: ErrorRow(504, "provider_timeout"),
}

STATUS_BY_ERROR = {cls: row.status for cls, row in ERROR_TABLE.items()}
INTERNAL = ErrorRow(500, "internal_error")


@dataclass(frozen=True)
class OpenAIRow:
    """Where OpenAI's answer differs from the row's: its status, its `code`, and the request field at fault."""

    status: int | None = None
    code: str | None = None
    param: str | None = None


OPENAI_TAG = "openai"  # the OpenAI router's tag
OPENAI_PATHS = ("/v1/embeddings", "/v1/models")
OPENAI_ROWS: dict[type[errors.DomainError], OpenAIRow] = {
    errors.UnknownModel: OpenAIRow(404, "model_not_found", "model"),
    errors.BatchTooLarge: OpenAIRow(400, param="input"),
    errors.RequestTooLarge: OpenAIRow(400, param="input"),
    errors.InputTooLong: OpenAIRow(param="input"),
    errors.InvalidInput: OpenAIRow(param="input"),
    errors.UnsupportedDimensions: OpenAIRow(param="dimensions"),
    errors.Unauthenticated: OpenAIRow(code="invalid_api_key"),
}
OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def speaks_openai(scope: Mapping[str, Any] | None) -> bool:
    """Whether an answer goes out in OpenAI's envelope: the matched route is on the OpenAI router (tagged
    "openai"); before or without a match (413 for the body, 404, 405), whether the path is one of OPENAI_PATHS."""
    if scope is None:
        return False
    route = scope.get("route")
    if route is not None:
        return OPENAI_TAG in getattr(route, "tags", ())
    path, root = scope.get("path", ""), scope.get("root_path", "")
    path = path[len(root) :] if root and path.startswith(root) else path
    return any(path == route or path.startswith(route + "/") for route in OPENAI_PATHS)


def row_of(exc: errors.DomainError) -> ErrorRow:
    return next((ERROR_TABLE[c] for c in type(exc).__mro__ if c in ERROR_TABLE), INTERNAL)


def error_body(kind: str, message: str, **details: object) -> dict[str, object]:
    return {"error": {"type": kind, "message": message, **details}}


def openai_error_body(status: int, message: str, code: str | None, param: str | None = None) -> dict[str, object]:
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def domain_error_response(
    exc: errors.DomainError, extra: Mapping[str, str] | None = None, scope: Mapping[str, Any] | None = None
) -> JSONResponse:
    row = row_of(exc)
    headers = {**(extra or {}), **row.headers(exc)}
    if speaks_openai(scope):
        status, body = _openai_answer(exc, row)
        return JSONResponse(body, status, headers=headers)
    return JSONResponse(error_body(row.type, exc.message, **exc.details), row.status, headers=headers)


def _openai_answer(exc: errors.DomainError, row: ErrorRow) -> tuple[int, dict[str, object]]:
    special = next((OPENAI_ROWS[c] for c in type(exc).__mro__ if c in OPENAI_ROWS), OpenAIRow())
    status = special.status or row.status
    code = special.code or row.type
    if isinstance(exc, errors.RateLimited):  # OpenAI's codes: a spent quota, or too many requests a minute
        code = "insufficient_quota" if exc.window == "day" else "rate_limit_exceeded"
    return status, openai_error_body(status, exc.message, code, special.param)


def internal_error_response(
    scope: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The generic 500; `headers` are the answer's own (a metered caller's rate-limit headers), never the error's."""
    if speaks_openai(scope):
        body = openai_error_body(500, "internal server error", INTERNAL.type)
        return JSONResponse(body, INTERNAL.status, headers=headers)
    return JSONResponse(error_body(INTERNAL.type, "internal server error"), INTERNAL.status, headers=headers)


def _location(loc: tuple[int | str, ...], union: bool) -> tuple[int | str, ...]:
    """On POST /embed (`union`), drop the dialect tag pydantic inserts: body.texts.texts.0 -> body.texts.0, and a
    body-wide error of the texts dialect, body.texts -> body."""
    from entrypoints.http.schemas.embed import DIALECT_TAGS

    if union and len(loc) > 1 and loc[0] == "body" and loc[1] in DIALECT_TAGS:
        return (loc[0], *loc[2:])
    return loc


NOT_AN_OBJECT = ("model_attributes_type", "dict_type", "model_type")


def _message(error: dict[str, Any], location: tuple[int | str, ...]) -> str:
    """pydantic's message; for a body that is not JSON, with the parser's reason (e.g. "no low surrogate in string");
    for a body that is no JSON object (sent without a JSON content type, say), what to send instead. Never the
    value that was sent (it may be a password)."""
    message = str(error.get("msg", ""))
    reason = (error.get("ctx") or {}).get("error")
    if error.get("type") == "json_invalid" and reason:
        return f"{message}: {reason}"
    if error.get("type") in NOT_AN_OBJECT and location == ("body",):
        return "the body must be a JSON object, sent with 'Content-Type: application/json'"
    return message


def _param(found: Sequence[Any]) -> str | None:
    """The request field of the first problem, as OpenAI names it ("input", "dimensions"); None for a body that is
    not JSON, or not an object."""
    location = [str(part) for part in (found[0].get("loc", ()) if found else ())]
    if len(location) < 2 or location[0] != "body" or found[0].get("type") == "json_invalid":
        return None
    return location[1]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.DomainError)
    async def on_domain_error(request: Request, exc: errors.DomainError) -> JSONResponse:
        return domain_error_response(exc, headers_for(request), request.scope)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        union = request.url.path == "/embed"
        problems = []
        found = exc.errors()
        not_json = request.scope.get(JSON_ERROR)
        if not_json is not None:  # the body was no JSON: that is the one problem, whatever else validation says
            position, reason = not_json
            found = [
                {
                    "type": "json_invalid",
                    "loc": ("body", position),
                    "msg": "JSON decode error",
                    "ctx": {"error": reason},
                }
            ]
        for err in found:
            location = _location(tuple(err.get("loc", ())), union)
            problems.append({"location": ".".join(map(str, location)), "message": _message(err, location)})
        summary = "; ".join(f"{p['location']}: {p['message']}" for p in problems)
        try:
            await count_refused_request(request)
        except errors.RateLimited as limited:
            return domain_error_response(limited, headers_for(request), request.scope)
        if speaks_openai(request.scope):  # OpenAI answers 400 for any malformed body, naming the field at fault
            body = openai_error_body(400, f"invalid request body: {summary}", "invalid_request", _param(found))
            return JSONResponse(body, 400, headers=headers_for(request))
        body = error_body("invalid_request", f"invalid request body: {summary}", problems=problems)
        return JSONResponse(body, 422, headers=headers_for(request))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method the path has, not only those of the first route matching it
            headers["Allow"] = ", ".join(allowed_methods(request))
        if speaks_openai(request.scope):
            body = openai_error_body(exc.status_code, str(exc.detail), kind)
            return JSONResponse(body, exc.status_code, headers=headers)
        return JSONResponse(error_body(kind, str(exc.detail)), exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled %s", type(exc).__name__, exc_info=exc)
        return internal_error_response(request.scope, headers_for(request))


def allowed_methods(request: Request) -> list[str]:
    """The methods some route of the app answers on this request's path (asked of the router, as it routes)."""
    routes = request.app.router.routes
    return [
        method
        for method in HTTP_METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]


HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
