"""Operations bodies: health (read by both apps' clients and the orchestrator) and the served model's metadata."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from domain.model import Limits, ModelInfo
from domain.use_cases import HealthReport, ServedModelReport


class HealthResponse(BaseModel):
    """One body for both clients: peoplepad reads status/model/ready, the events app model_loaded/model_name."""

    status: str
    ready: bool
    model: str
    model_loaded: bool
    model_name: str
    models: dict[str, str] = Field(description="each served model (the default first): ok, loading or error")


class ModelIdentity(BaseModel):
    """What names a model's exact weights and shape."""

    model: str
    hub_id: str
    dimension: int
    max_seq_length: int
    revision: str
    weights_sha256: str


class ModelMetadata(ModelIdentity):
    pooling: str
    prompts: dict[str, str] = Field(description="the prefix each input_type (query, document) gets; {}: none")
    matryoshka_dimensions: list[int] = Field(description="sizes `dimensions` may truncate to (besides the full one)")
    state: str = Field(description="ok, loading or error; device, backend and precision are null until ok")
    device: str | None
    backend: str | None = Field(description="torch, onnx or openvino")
    precision: str | None = Field(description="fp32, fp16 or int8")
    min_cosine_vs_torch: float | None = Field(
        description="agreement with torch fp32 measured at start-up on the check texts; null for torch fp32 itself"
    )


class MetadataResponse(ModelIdentity):
    """The default model's facts at the top level (what single-model clients read), every served model in `models`."""

    library: str
    library_version: str
    device: str
    backend: str = Field(description="torch, onnx or openvino")
    precision: str = Field(description="fp32, fp16 or int8")
    min_cosine_vs_torch: float | None = Field(
        description="agreement with torch fp32 measured at start-up on the check texts; null for torch fp32 itself"
    )
    max_batch_size: int
    max_input_length: int
    models: list[ModelMetadata] = Field(description="every served model, the default first (MODELS)")


def render_health(report: HealthReport) -> dict[str, Any]:
    return HealthResponse(
        status=report.status,
        ready=report.ready,
        model=report.model,
        model_loaded=report.ready,
        model_name=report.model,
        models=report.models,
    ).model_dump()


def _model_metadata(report: ServedModelReport) -> ModelMetadata:
    spec, info = report.spec, report.info
    return ModelMetadata(
        model=spec.name,
        hub_id=spec.hub_id,
        dimension=spec.dimension,
        max_seq_length=spec.max_seq_length,
        revision=spec.revision,
        weights_sha256=spec.weights_sha256,
        pooling=spec.pooling,
        prompts=dict(spec.prompts),
        matryoshka_dimensions=list(spec.matryoshka_dimensions),
        state=report.state,
        device=info.device if info else None,
        backend=info.backend if info else None,
        precision=info.precision if info else None,
        min_cosine_vs_torch=info.min_cosine_vs_torch if info else None,
    )


def render_metadata(default: ModelInfo, models: list[ServedModelReport], limits: Limits) -> dict[str, Any]:
    listed = [_model_metadata(report) for report in models]
    first = listed[0].model_dump(exclude={"pooling", "prompts", "matryoshka_dimensions", "state"})
    return MetadataResponse(
        **first,
        library="sentence-transformers",
        library_version=default.library_version,
        max_batch_size=limits.max_batch_size,
        max_input_length=limits.max_input_length,
        models=listed,
    ).model_dump()
