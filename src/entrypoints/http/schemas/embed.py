"""Request and response bodies of the HTTP API: the peoplepad dialect and the events-app dialect of POST /embed.

Limits the domain checks with its own errors (400 invalid_input / input_too_long / unknown_model /
unsupported_encoding_format, 413 batch_too_large) are documented in the schema (minItems, minLength, enum; the
configured maxItems and maxLength are filled in per app by `document_limits`) but not enforced by it, so a request
that breaks one gets that specific error instead of a generic 422.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from domain.use_cases import EmbeddingResult
from entrypoints.http.schemas.common import (
    NON_EMPTY,
    InputTypeName,
    encoding_format_field,
    input_type_field,
    model_field,
)


class EmbedRequest(BaseModel):
    """peoplepad dialect: one text."""

    input: str = Field(description="the text to embed")
    model: str | None = model_field()
    encoding_format: str = encoding_format_field()
    input_type: InputTypeName = input_type_field()


class EmbedTextsRequest(BaseModel):
    """events-app dialect: a list of texts (1 to MAX_BATCH_SIZE)."""

    texts: list[str] = Field(description="texts to embed, answered in the same order", json_schema_extra=NON_EMPTY)
    model: str | None = model_field()
    encoding_format: str = encoding_format_field()
    input_type: InputTypeName = input_type_field()

    @model_validator(mode="before")
    @classmethod
    def _one_dialect(cls, data: Any) -> Any:
        if isinstance(data, dict) and "input" in data:
            raise ValueError("send either `input` (one text, peoplepad) or `texts` (a list, events app), not both")
        return data


DIALECT_TAGS = ("input", "texts")


def _dialect(body: Any) -> str:
    return "texts" if isinstance(body, dict) and "texts" in body else "input"


EmbedAnyRequest = Annotated[
    Annotated[EmbedRequest, Tag("input")] | Annotated[EmbedTextsRequest, Tag("texts")],
    Discriminator(_dialect),
]


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float]
    index: int


class EmbedResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[EmbeddingData]


class EmbedTextsResponse(BaseModel):
    embeddings: list[list[float]]
    model: str
    processing_time_ms: float


class BatchInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, description="caller's record id, echoed in the response")
    text: str


class EmbedBatchRequest(BaseModel):
    # ids are unique within a batch, so are items (uniqueItems states what JSON Schema can of that)
    inputs: list[BatchInput] = Field(json_schema_extra={**NON_EMPTY, "uniqueItems": True})
    model: str | None = model_field()
    encoding_format: str = encoding_format_field()
    input_type: InputTypeName = input_type_field()


class BatchEmbeddingData(BaseModel):
    id: str
    object: Literal["embedding"] = "embedding"
    embedding: list[float]


class EmbedBatchResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[BatchEmbeddingData]


def render_one(result: EmbeddingResult) -> dict[str, Any]:
    """EmbedResponse: the peoplepad dialect's answer to one text."""
    item = result.items[0]
    return {
        "object": "list",
        "model": result.model,
        "data": [{"object": "embedding", "embedding": item.embedding, "index": item.index}],
    }


def render_texts(result: EmbeddingResult, started: float) -> dict[str, Any]:
    """EmbedTextsResponse: the events app's answer; `started` is a time.perf_counter() reading."""
    return {
        "embeddings": [item.embedding for item in result.items],
        "model": result.model,
        "processing_time_ms": round((time.perf_counter() - started) * 1000, 3),
    }


def render_batch(result: EmbeddingResult) -> dict[str, Any]:
    """EmbedBatchResponse: the peoplepad batch answer, ids echoed in order."""
    return {
        "object": "list",
        "model": result.model,
        "data": [{"id": item.id, "object": "embedding", "embedding": item.embedding} for item in result.items],
    }
