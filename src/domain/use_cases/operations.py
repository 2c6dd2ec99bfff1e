"""Operations use cases: health and readiness, and what model and limits this service serves."""

from __future__ import annotations

from dataclasses import dataclass, field

from domain.model import Limits, ModelInfo, ModelSpec
from domain.ports import RequestCache
from domain.services import ModelPool, ModelState


@dataclass(frozen=True)
class HealthReport:
    status: str
    model: str  # the default model
    ready: bool
    models: dict[str, str] = field(default_factory=dict)  # each served model's state


class GetHealth:
    """Report whether every served model is loaded and warm, and the cache's start-up preparation has run (ready does
    not depend on the cache being reachable: requests go on without it)."""

    def __init__(self, models: ModelPool, cache: RequestCache) -> None:
        self._models = models
        self._cache = cache

    def execute(self) -> HealthReport:
        state = self._models.state
        if state is ModelState.READY and not self._cache.settled:
            state = ModelState.LOADING
        return HealthReport(
            status=state.value,
            model=self._models.default.spec.name,
            ready=state is ModelState.READY,
            models={model.spec.name: model.host.state.value for model in self._models.served},
        )


@dataclass(frozen=True)
class ServedModelReport:
    spec: ModelSpec
    state: str  # ok, loading or error
    info: ModelInfo | None  # what the loaded embedder reports (backend, precision, agreement); None until loaded


class GetMetadata:
    """Describe the served models (name, dimension, revision, checksum, backend, prompts), the default first, and the
    request limits. The default model must be loaded (ModelNotReady); another one still loading (or failed) is
    described by its pin and state."""

    def __init__(self, models: ModelPool, limits: Limits) -> None:
        self._models = models
        self._limits = limits

    def execute(self) -> tuple[ModelInfo, list[ServedModelReport], Limits]:
        default = self._models.default.host.embedder().info
        reports = [
            ServedModelReport(
                model.spec,
                model.host.state.value,
                model.host.embedder().info if model.host.state is ModelState.READY else None,
            )
            for model in self._models.served
        ]
        return default, reports, self._limits


class ListModels:
    """The models this service serves (loaded or still loading), or the one a name (short name or hub id) picks."""

    def __init__(self, models: ModelPool) -> None:
        self._models = models

    def execute(self) -> list[ModelSpec]:
        return self._models.specs

    def find(self, name: str) -> ModelSpec:
        return self._models.pick(name).spec
