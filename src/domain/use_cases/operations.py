"""Operations use cases: health and readiness, and what model and limits this service serves."""

from __future__ import annotations

from dataclasses import dataclass

from domain.errors import UnknownModel
from domain.model import Limits, ModelInfo, ModelSpec
from domain.ports import RequestCache
from domain.services import ModelHost, ModelState


@dataclass(frozen=True)
class HealthReport:
    status: str
    model: str
    ready: bool


class GetHealth:
    """Report whether the served model is loaded and warm, and the cache's start-up preparation has run (ready does
    not depend on the cache being reachable: requests go on without it)."""

    def __init__(self, host: ModelHost, cache: RequestCache) -> None:
        self._host = host
        self._cache = cache

    def execute(self) -> HealthReport:
        state = self._host.state
        if state is ModelState.READY and not self._cache.settled:
            state = ModelState.LOADING
        return HealthReport(status=state.value, model=self._host.spec.name, ready=state is ModelState.READY)


class GetMetadata:
    """Describe the served model (name, dimension, revision, checksum, library version) and the request limits."""

    def __init__(self, host: ModelHost, limits: Limits) -> None:
        self._host = host
        self._limits = limits

    def execute(self) -> tuple[ModelInfo, Limits]:
        return self._host.embedder().info, self._limits


class ListModels:
    """The models this service serves (loaded or still loading), or the one a name (short name or hub id) picks."""

    def __init__(self, host: ModelHost) -> None:
        self._host = host

    def execute(self) -> list[ModelSpec]:
        return [self._host.spec]

    def find(self, name: str) -> ModelSpec:
        spec = self._host.spec
        if not spec.answers_to(name):
            raise UnknownModel(name, spec.name, spec.aliases)
        return spec
