"""Pytest configuration: hypothesis profile and the environment the suite runs in."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.support import stop_test_schedulers

settings.register_profile("default", max_examples=60, deadline=None)
settings.load_profile("default")

for variable in (
    "PEOPLEPAD_CLIENT_KEY",
    "EMBEDDING_API_KEY",
    "ALLOW_UNAUTHENTICATED",
    "EMBEDDER_BACKEND",
    "EMBEDDING_SERVICE_URL",
    "EMBEDDING_MODEL",
    "TENANT_API_KEYS",
    "CACHE_BACKEND",
    "CACHE_URL",
    "CACHE_SHARED_POOL",
    "DATA_DIR",
):
    os.environ.pop(variable, None)


@pytest.fixture(autouse=True, scope="module")
def _stop_test_schedulers() -> Iterator[None]:
    yield
    stop_test_schedulers()
