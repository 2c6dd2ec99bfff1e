"""The one table mapping domain errors to HTTP: each row gives the status, the wire type (explicit, never derived
from a class name) and the headers the answer carries. Also the JSON error body, and the handlers for errors that
do not come from the domain (invalid bodies, unknown routes, anything unexpected)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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
    errors.RateLimited: ErrorRow(429, "rate_limited", _retry_after),
    errors.ModelNotReady: ErrorRow(503, "model_not_ready", _retry_in_5),
    errors.Overloaded: ErrorRow(503, "overloaded", _retry_after),
    errors.BackendFailure: ErrorRow(503, "backend_failure"),
    errors.ModelIntegrityError: ErrorRow(503, "model_integrity_error"),
    errors.BackendDisagrees: ErrorRow(503, "backend_disagrees"),
    errors.CacheUnavailable: ErrorRow(503, "cache_unavailable", _retry_in_5),
    errors.AccountsUnavailable: ErrorRow(503, "accounts_unavailable", _retry_in_5),
    errors.Timeout: ErrorRow(504, "timeout"),
}

STATUS_BY_ERROR = {cls: row.status for cls, row in ERROR_TABLE.items()}
INTERNAL = ErrorRow(500, "internal_error")


def row_of(exc: errors.DomainError) -> ErrorRow:
    return next((ERROR_TABLE[c] for c in type(exc).__mro__ if c in ERROR_TABLE), INTERNAL)


def error_body(kind: str, message: str, **details: object) -> dict[str, object]:
    return {"error": {"type": kind, "message": message, **details}}


def domain_error_response(exc: errors.DomainError, extra: Mapping[str, str] | None = None) -> JSONResponse:
    row = row_of(exc)
    headers = {**(extra or {}), **row.headers(exc)}
    return JSONResponse(error_body(row.type, exc.message, **exc.details), row.status, headers=headers)


def internal_error_response() -> JSONResponse:
    return JSONResponse(error_body(INTERNAL.type, "internal server error"), INTERNAL.status)


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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.DomainError)
    async def on_domain_error(request: Request, exc: errors.DomainError) -> JSONResponse:
        return domain_error_response(exc, headers_for(request))

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
        body = error_body("invalid_request", f"invalid request body: {summary}", problems=problems)
        try:
            await count_refused_request(request)
        except errors.RateLimited as limited:
            return domain_error_response(limited, headers_for(request))
        return JSONResponse(body, 422, headers=headers_for(request))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(kind, str(exc.detail)), exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled %s", type(exc).__name__, exc_info=exc)
        return internal_error_response()
