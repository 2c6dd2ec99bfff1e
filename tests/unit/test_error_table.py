"""Every domain error has exactly one HTTP status in the entrypoint's table."""

from __future__ import annotations

import inspect

import pytest

from domain import errors
from entrypoints.http.errors import STATUS_BY_ERROR

ERROR_CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.DomainError) and cls is not errors.DomainError
]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_domain_error_is_mapped(cls: type[errors.DomainError]) -> None:
    assert cls in STATUS_BY_ERROR


def test_table_has_no_stale_entries() -> None:
    assert set(STATUS_BY_ERROR) == set(ERROR_CLASSES)


def test_statuses_follow_the_contract() -> None:
    assert STATUS_BY_ERROR[errors.InputTooLong] == 400
    assert STATUS_BY_ERROR[errors.UnknownModel] == 400
    assert STATUS_BY_ERROR[errors.UnsupportedEncodingFormat] == 400
    assert STATUS_BY_ERROR[errors.Unauthenticated] == 401
    assert STATUS_BY_ERROR[errors.BatchTooLarge] == 413
    assert STATUS_BY_ERROR[errors.PayloadTooLarge] == 413
    assert STATUS_BY_ERROR[errors.Timeout] == 504
    assert STATUS_BY_ERROR[errors.BackendFailure] == 503
    assert STATUS_BY_ERROR[errors.Overloaded] == 503


def test_rows_carry_the_wire_type_and_headers() -> None:
    from entrypoints.http.errors import ERROR_TABLE, domain_error_response

    assert all(row.type and row.type == row.type.lower() for row in ERROR_TABLE.values())
    limited = errors.RateLimited("over", retry_after_s=42, limit=10, window="day", reset_at="2026-11-25T00:00:00Z")
    response = domain_error_response(limited, {"RateLimit": '"day";r=0;t=42'})
    assert (response.status_code, response.headers["retry-after"]) == (429, "42")
    assert response.headers["ratelimit"] == '"day";r=0;t=42'  # the caller's rate-limit headers ride along
    assert b'"type":"rate_limited"' in response.body and b'"window":"day"' in response.body
    for cls in (errors.Unauthenticated, errors.InvalidCredentials, errors.SessionRequired):
        assert domain_error_response(cls()).headers["www-authenticate"] == "Bearer"
    assert domain_error_response(errors.Overloaded(7)).headers["retry-after"] == "7"
    assert domain_error_response(errors.AccountsUnavailable()).headers["retry-after"] == "5"
    assert b'"type":"invalid_credentials"' in domain_error_response(errors.InvalidCredentials()).body
