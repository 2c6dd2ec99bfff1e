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
