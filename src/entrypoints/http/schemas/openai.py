"""Bodies of OpenAI's embeddings API (POST /v1/embeddings, GET /v1/models), as its SDK and the tools built on it
send and read them, and the error envelope this router answers with."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from domain.model import EmbedInput, ModelSpec, TokenIds
from domain.use_cases import EmbeddingResult
from entrypoints.http.schemas.common import InputTypeName, input_type_field

OWNER = "embedding-service"
CREATED = 0  # `created` of a served model: unknown (not when a process started: that differs per worker)


def _token_id(value: Any) -> Any:
    """A token id as JSON Schema's integer is: a whole number, written 7 or 7.0 (never true/false)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


TokenArray = list[Annotated[StrictInt, BeforeValidator(_token_id)]]
INPUT_SHAPES = "a string, a list of strings, a list of token ids (integers), or a list of such lists"


def _one_input_error(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """One message for an `input` of none of the four shapes, instead of one per shape tried."""
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError("input_shape", f"input must be {INPUT_SHAPES}") from None


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request. Other fields (a client's own extensions) are ignored."""

    model_config = ConfigDict(extra="ignore")

    input: Annotated[StrictStr | list[StrictStr] | list[TokenArray] | TokenArray, WrapValidator(_one_input_error)] = (
        Field(
            description="a text, a list of texts, the token ids of one text, or a list of token-id lists (ids of the "
            "served model's own tokenizer, with or without its special tokens)"
        )
    )
    model: StrictStr | None = Field(
        None,
        min_length=1,
        description="the served model's short name or hub id (another -> 404 model_not_found); unset: the served one",
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: lists of numbers; base64: each vector's little-endian float32 bytes"
    )
    dimensions: StrictInt | None = Field(
        None,
        ge=1,
        description="only for a model trained for truncated vectors (Matryoshka), to one of its sizes; "
        "else only its full dimension (another -> 400)",
    )
    user: StrictStr | None = Field(None, description="accepted and ignored")
    input_type: InputTypeName = input_type_field()

    def inputs(self) -> list[EmbedInput]:
        value = self.input
        if isinstance(value, str):
            return [value]
        if value and isinstance(value[0], int):
            return [TokenIds(tuple(value))]
        return [TokenIds(tuple(item)) if isinstance(item, list) else item for item in value]  # type: ignore[misc]


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="the vector: numbers, or base64 of little-endian float32")


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int = Field(description="tokens of the inputs as the model took them (special tokens included)")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingsUsage


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, rate_limit_error, server_error ...")
    param: str | None = Field(description="the request field at fault, if one is")
    code: str | None = Field(description="what went wrong, e.g. model_not_found, invalid_api_key, overloaded")


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorDetail


def openai_error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": OpenAIErrorResponse} for code in codes}


def render_embeddings(result: EmbeddingResult, model: str, encoding_format: str) -> dict[str, Any]:
    """OpenAI's list of embeddings; `model` as the caller named it (one of the served model's names)."""
    if encoding_format == "base64":
        vectors: list[Any] = [_base64(item.embedding) for item in result.items]
    else:
        vectors = [item.embedding for item in result.items]
    tokens = result.tokens or 0
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _base64(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def render_model(spec: ModelSpec) -> dict[str, Any]:
    return {"id": spec.name, "object": "model", "created": CREATED, "owned_by": OWNER}


def render_models(specs: list[ModelSpec]) -> dict[str, Any]:
    return {"object": "list", "data": [render_model(spec) for spec in specs]}
