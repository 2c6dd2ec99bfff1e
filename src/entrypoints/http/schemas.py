"""Request and response bodies of the HTTP API (the peoplepad contract)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EmbedRequest(BaseModel):
    input: str = Field(description="the text to embed")
    model: str | None = Field(None, description="served model: short name or hub id")
    encoding_format: str = "float"


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float]
    index: int


class EmbedResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[EmbeddingData]


class BatchInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, description="caller's record id, echoed in the response")
    text: str


class EmbedBatchRequest(BaseModel):
    inputs: list[BatchInput]
    model: str | None = None
    encoding_format: str = "float"


class BatchEmbeddingData(BaseModel):
    id: str
    object: Literal["embedding"] = "embedding"
    embedding: list[float]


class EmbedBatchResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[BatchEmbeddingData]


class HealthResponse(BaseModel):
    status: str
    model: str
    ready: bool


class MetadataResponse(BaseModel):
    model: str
    hub_id: str
    dimension: int
    max_seq_length: int
    revision: str
    weights_sha256: str
    library: str
    library_version: str
    device: str


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
