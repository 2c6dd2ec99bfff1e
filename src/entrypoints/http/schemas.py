"""Request and response bodies of the HTTP API: the peoplepad dialect and the events-app dialect of POST /embed.

Limits the domain checks with its own errors (400 invalid_input / input_too_long / unknown_model /
unsupported_encoding_format, 413 batch_too_large) are documented in the schema (minItems, minLength, enum; the
configured maxItems and maxLength are filled in per app by `document_limits`) but not enforced by it, so a request
that breaks one gets that specific error instead of a generic 422.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

MODEL_FIELD_SCHEMA: dict[str, Any] = {"minLength": 1}
ENCODING_FORMAT_SCHEMA: dict[str, Any] = {"enum": ["float"]}
NON_EMPTY: dict[str, Any] = {"minItems": 1}


def model_field() -> Any:
    return Field(
        None,
        description="served model: short name or hub id (another -> 400 unknown_model)",
        json_schema_extra=MODEL_FIELD_SCHEMA,
    )


def encoding_format_field() -> Any:
    return Field("float", description="only float (else 400)", json_schema_extra=ENCODING_FORMAT_SCHEMA)


class EmbedRequest(BaseModel):
    """peoplepad dialect: one text."""

    input: str = Field(description="the text to embed")
    model: str | None = model_field()
    encoding_format: str = encoding_format_field()


class EmbedTextsRequest(BaseModel):
    """events-app dialect: a list of texts (1 to MAX_BATCH_SIZE)."""

    texts: list[str] = Field(description="texts to embed, answered in the same order", json_schema_extra=NON_EMPTY)
    model: str | None = model_field()
    encoding_format: str = encoding_format_field()

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
    inputs: list[BatchInput] = Field(json_schema_extra=NON_EMPTY)
    model: str | None = model_field()
    encoding_format: str = encoding_format_field()


class BatchEmbeddingData(BaseModel):
    id: str
    object: Literal["embedding"] = "embedding"
    embedding: list[float]


class EmbedBatchResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[BatchEmbeddingData]


class HealthResponse(BaseModel):
    """One body for both clients: peoplepad reads status/model/ready, the events app model_loaded/model_name."""

    status: str
    ready: bool
    model: str
    model_loaded: bool
    model_name: str


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
    backend: str = Field(description="torch, onnx or openvino")
    precision: str = Field(description="fp32, fp16 or int8")
    min_cosine_vs_torch: float | None = Field(
        description="agreement with torch fp32 measured at start-up on the check texts; null for torch fp32 itself"
    )
    max_batch_size: int
    max_input_length: int


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class V1EmbedRequest(BaseModel):
    """Hosted API: one text."""

    text: str = Field(description="the text to embed")
    model: str | None = model_field()
    encoding_format: str = encoding_format_field()


class V1EmbedResponse(BaseModel):
    embedding: list[float]
    cached: bool = Field(description="true when the vector came from the cache instead of the model")
    dimensions: int


class V1EmbedBatchRequest(BaseModel):
    """Hosted API: 1 to MAX_BATCH_SIZE (100) texts."""

    texts: list[str] = Field(description="texts to embed, answered in the same order", json_schema_extra=NON_EMPTY)
    model: str | None = model_field()
    encoding_format: str = encoding_format_field()


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


# (schema, field, whether the field is a list of texts) -> what the configured limits bound
_TEXT_FIELDS = [
    ("EmbedRequest", "input", False),
    ("EmbedTextsRequest", "texts", True),
    ("BatchInput", "text", False),
    ("V1EmbedRequest", "text", False),
    ("V1EmbedBatchRequest", "texts", True),
]
_LIST_FIELDS = [("EmbedTextsRequest", "texts"), ("EmbedBatchRequest", "inputs"), ("V1EmbedBatchRequest", "texts")]


def document_limits(openapi: dict[str, Any], max_batch_size: int, max_input_length: int) -> dict[str, Any]:
    """Write the configured MAX_BATCH_SIZE and MAX_INPUT_LENGTH into the OpenAPI document as maxItems/maxLength."""
    schemas = openapi["components"]["schemas"]
    for name, field in _LIST_FIELDS:
        schemas[name]["properties"][field]["maxItems"] = max_batch_size
    for name, field, is_list in _TEXT_FIELDS:
        prop = schemas[name]["properties"][field]
        (prop["items"] if is_list else prop)["maxLength"] = max_input_length
    return openapi
