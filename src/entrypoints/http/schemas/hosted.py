"""Bodies of the hosted API under /v1: embedding with the cache (and the shared pool), the caller's cache stats and
usage, and the unauthenticated health check."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, StrictBool

from domain.use_cases import CacheReport, EmbeddingResult, UsageReport
from entrypoints.http.schemas.common import (
    NON_EMPTY,
    InputTypeName,
    encoding_format_field,
    input_type_field,
    model_field,
)


class V1EmbedRequest(BaseModel):
    """Hosted API: one text."""

    text: str = Field(description="the text to embed")
    model: str | None = model_field()
    encoding_format: str = encoding_format_field()
    input_type: InputTypeName = input_type_field()
    public: StrictBool = Field(
        False, description="store the computed vector in the shared pool: every tenant then finds this text cached"
    )


class V1EmbedResponse(BaseModel):
    embedding: list[float]
    cached: bool = Field(description="true when the vector came from the cache instead of the model")
    dimensions: int


class V1EmbedBatchRequest(BaseModel):
    """Hosted API: 1 to MAX_BATCH_SIZE (100) texts."""

    texts: list[str] = Field(description="texts to embed, answered in the same order", json_schema_extra=NON_EMPTY)
    model: str | None = model_field()
    encoding_format: str = encoding_format_field()
    input_type: InputTypeName = input_type_field()
    public: StrictBool = Field(
        False, description="store computed vectors in the shared pool: every tenant then finds these texts cached"
    )


class V1EmbedBatchResponse(BaseModel):
    embeddings: list[list[float]]
    cached: list[bool] = Field(description="per text, in order: served from the cache")
    dimensions: int


class CacheStatsResponse(BaseModel):
    tenant: str = Field(description="the caller's tenant, from its API key")
    cache: str = Field(description="cache backend: none, memory, sqlite or postgres")
    hits: int = Field(description="distinct texts per request served from the cache")
    misses: int = Field(description="distinct texts per request looked up and not found")
    entries: int = Field(description="vectors stored for this tenant")
    cache_hits: int = Field(description="the same as hits")
    cache_misses: int = Field(description="the same as misses")
    total_cached: int = Field(description="the same as entries")


class UsageRow(BaseModel):
    date: str = Field(description="UTC day, YYYY-MM-DD")
    model: str
    requests: int
    texts: int
    tokens: int
    cache_hits: int
    cache_misses: int
    compute_ms: float


class UsageTotals(BaseModel):
    requests: int
    texts: int
    tokens: int
    cache_hits: int
    cache_misses: int
    compute_ms: float


class UsageResponse(BaseModel):
    account_id: str
    since: str = Field(description="first UTC day covered, YYYY-MM-DD")
    days: int
    usage: list[UsageRow] = Field(description="per UTC day and model, newest first; days without use are absent")
    totals: UsageTotals


class V1HealthResponse(BaseModel):
    status: str = Field(description="ok, loading or error")
    version: str


def render_one(result: EmbeddingResult) -> dict[str, Any]:
    item = result.items[0]
    return {"embedding": item.embedding, "cached": item.cached, "dimensions": result.dimensions}


def render_batch(result: EmbeddingResult) -> dict[str, Any]:
    return {
        "embeddings": [item.embedding for item in result.items],
        "cached": [item.cached for item in result.items],
        "dimensions": result.dimensions,
    }


def render_stats(report: CacheReport) -> dict[str, Any]:
    stats = report.stats
    return CacheStatsResponse(
        tenant=report.tenant,
        cache=report.backend,
        hits=stats.hits,
        misses=stats.misses,
        entries=stats.entries,
        cache_hits=stats.hits,
        cache_misses=stats.misses,
        total_cached=stats.entries,
    ).model_dump()


def render_usage(report: UsageReport, days: int) -> dict[str, Any]:
    totals = report.totals
    return UsageResponse(
        account_id=report.account_id,
        since=report.since.isoformat(),
        days=days,
        usage=[
            UsageRow(
                date=row.day.isoformat(),
                model=row.model,
                requests=row.requests,
                texts=row.texts,
                tokens=row.tokens,
                cache_hits=row.cache_hits,
                cache_misses=row.cache_misses,
                compute_ms=round(row.compute_ms, 3),
            )
            for row in report.rows
        ],
        totals=UsageTotals(
            requests=totals.requests,
            texts=totals.texts,
            tokens=totals.tokens,
            cache_hits=totals.cache_hits,
            cache_misses=totals.cache_misses,
            compute_ms=round(totals.compute_ms, 3),
        ),
    ).model_dump()
