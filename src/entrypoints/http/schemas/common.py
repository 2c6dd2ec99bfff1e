"""What every dialect's schemas share: the model and encoding_format fields, the error body, and writing the
configured limits into the OpenAPI document."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MODEL_FIELD_SCHEMA: dict[str, Any] = {"minLength": 1}
ENCODING_FORMAT_SCHEMA: dict[str, Any] = {"enum": ["float"]}
NON_EMPTY: dict[str, Any] = {"minItems": 1}


def model_field() -> Any:
    return Field(
        None,
        description="served model: short name or hub id (another -> 400 unknown_model)",
        json_schema_extra=MODEL_FIELD_SCHEMA,
    )


InputTypeName = Literal["query", "document"]


def input_type_field() -> Any:
    return Field(
        "document",
        description="query or document: the model's prompt for that type is prefixed (nomic's \"search_query: \", "
        'e5\'s "query: "); a model without prompts ignores it',
    )


def encoding_format_field() -> Any:
    return Field("float", description="only float (else 400)", json_schema_extra=ENCODING_FORMAT_SCHEMA)


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


# (schema, field, whether the field is a list of texts) -> what the configured limits bound
_TEXT_FIELDS = [
    ("EmbedRequest", "input", False),
    ("EmbedTextsRequest", "texts", True),
    ("BatchInput", "text", False),
    ("V1EmbedRequest", "text", False),
    ("V1EmbedBatchRequest", "texts", True),
]
_LIST_FIELDS = [("EmbedTextsRequest", "texts"), ("EmbedBatchRequest", "inputs"), ("V1EmbedBatchRequest", "texts")]


def document_limits(
    openapi: dict[str, Any], max_batch_size: int, max_input_length: int, openai_max_inputs: int | None = None
) -> dict[str, Any]:
    """Write the configured MAX_BATCH_SIZE and MAX_INPUT_LENGTH into the OpenAPI document as maxItems/maxLength,
    and on OpenAI's request the effective OPENAI_MAX_INPUTS (no empty input there)."""
    schemas = openapi["components"]["schemas"]
    for name, field in _LIST_FIELDS:
        schemas[name]["properties"][field]["maxItems"] = max_batch_size
    for name, field, is_list in _TEXT_FIELDS:
        prop = schemas[name]["properties"][field]
        (prop["items"] if is_list else prop)["maxLength"] = max_input_length
    if openai_max_inputs is not None and "EmbeddingsRequest" in schemas:
        _document_openai_input(schemas["EmbeddingsRequest"]["properties"]["input"], openai_max_inputs, max_input_length)
    return openapi


def _document_openai_input(prop: dict[str, Any], max_inputs: int, max_length: int) -> None:
    """input: a text, texts, token ids or lists of them; none empty, at most MAX_INPUT_LENGTH characters or ids
    each, at most `max_inputs` inputs."""
    for shape in prop["anyOf"]:
        if shape["type"] == "string":
            shape.update(minLength=1, maxLength=max_length)
            continue
        items = shape["items"]
        if items["type"] == "integer":  # the token ids of one text
            shape.update(minItems=1, maxItems=max_length)
            items["minimum"] = 0
            continue
        shape.update(minItems=1, maxItems=max_inputs)
        if items["type"] == "string":
            items.update(minLength=1, maxLength=max_length)
        else:
            items.update(minItems=1, maxItems=max_length)
            items["items"]["minimum"] = 0


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route: each status it may answer with the error body."""
    return {code: {"model": ErrorResponse} for code in codes}
