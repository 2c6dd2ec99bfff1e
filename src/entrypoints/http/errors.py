"""The one table mapping domain errors to HTTP status codes, and the JSON error body."""

from __future__ import annotations

import re

from fastapi.responses import JSONResponse

from domain import errors

STATUS_BY_ERROR: dict[type[errors.DomainError], int] = {
    errors.InvalidInput: 400,
    errors.InputTooLong: 400,
    errors.UnknownModel: 400,
    errors.UnsupportedEncodingFormat: 400,
    errors.Unauthenticated: 401,
    errors.BatchTooLarge: 413,
    errors.PayloadTooLarge: 413,
    errors.ModelNotReady: 503,
    errors.Overloaded: 503,
    errors.BackendFailure: 503,
    errors.ModelIntegrityError: 503,
    errors.BackendDisagrees: 503,
    errors.CacheUnavailable: 503,
    errors.Timeout: 504,
}


def error_type(exc: errors.DomainError) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


def error_body(kind: str, message: str, **details: object) -> dict[str, object]:
    return {"error": {"type": kind, "message": message, **details}}


def domain_error_response(exc: errors.DomainError) -> JSONResponse:
    status = next((STATUS_BY_ERROR[c] for c in type(exc).__mro__ if c in STATUS_BY_ERROR), 500)
    headers: dict[str, str] = {}
    if isinstance(exc, errors.Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, errors.Overloaded):
        headers["Retry-After"] = str(exc.retry_after_s)
    elif isinstance(exc, errors.ModelNotReady | errors.CacheUnavailable):
        headers["Retry-After"] = "5"
    return JSONResponse(error_body(error_type(exc), exc.message, **exc.details), status, headers=headers)


def internal_error_response() -> JSONResponse:
    return JSONResponse(error_body("internal_error", "internal server error"), 500)
