"""What every dialect's schemas share: the model and encoding_format fields, the error body, and writing the
configured limits into the OpenAPI document."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
    openapi: dict[str, Any],
    max_batch_size: int,
    max_input_length: int,
    openai_max_inputs: int | None = None,
    model_names: Sequence[str] = (),
    dimensions: Sequence[int] = (),
    token_ids: TokenIdLimits | None = None,
) -> dict[str, Any]:
    """Write the configured MAX_BATCH_SIZE and MAX_INPUT_LENGTH into the OpenAPI document as maxItems/maxLength,
    on OpenAI's request the effective OPENAI_MAX_INPUTS (no empty input there), and the names `model` may take (the
    served models' short names and hub ids) and `dimensions` (their full sizes and Matryoshka sizes)."""
    schemas = openapi["components"]["schemas"]
    if dimensions:
        asked = schemas.get("EmbeddingsRequest", {}).get("properties", {}).get("dimensions")
        _enumerate(asked, "integer", sorted(set(dimensions)))
    for name, schema in schemas.items() if model_names else ():
        if name.endswith("Request"):  # not answers: a usage row names a provider, or a model no longer served
            _enumerate(schema.get("properties", {}).get("model"), "string", list(model_names))
    for name, field in _LIST_FIELDS:
        schemas[name]["properties"][field]["maxItems"] = max_batch_size
    for name, field, is_list in _TEXT_FIELDS:
        prop = schemas[name]["properties"][field]
        (prop["items"] if is_list else prop)["maxLength"] = max_input_length
    if openai_max_inputs is not None and "EmbeddingsRequest" in schemas:
        prop = schemas["EmbeddingsRequest"]["properties"]["input"]
        _document_openai_input(prop, openai_max_inputs, max_input_length, token_ids)
    return openapi


def _enumerate(prop: Any, json_type: str, values: list[Any]) -> None:
    """Give the `json_type` shape of a property (the property itself, or one of its anyOf) the values it may take,
    unless it lists them already."""
    for shape in prop.get("anyOf", [prop]) if isinstance(prop, dict) else ():
        if shape.get("type") == json_type and "enum" not in shape:
            shape["enum"] = values


@dataclass(frozen=True)
class TokenIdLimits:
    """What token ids the served models take: below the smallest vocabulary, and not only special ids (padding,
    [CLS], [SEP]: an empty text in disguise)."""

    vocabulary_size: int
    special_ids: frozenset[int]


def _document_openai_input(
    prop: dict[str, Any], max_inputs: int, max_length: int, token_ids: TokenIdLimits | None
) -> None:
    """input: a text, texts, token ids or lists of them; none empty, at most MAX_INPUT_LENGTH characters or ids
    each, at most `max_inputs` inputs; ids within the served vocabulary, not only special ones (once known)."""

    def one_text(array: dict[str, Any]) -> None:
        array.update(minItems=1, maxItems=max_length)
        array["items"]["minimum"] = 0
        if token_ids is not None:
            array["items"]["maximum"] = token_ids.vocabulary_size - 1
            array["not"] = {"items": {"enum": sorted(token_ids.special_ids)}}

    for shape in prop["anyOf"]:
        if shape["type"] == "string":
            shape.update(minLength=1, maxLength=max_length)
            continue
        items = shape["items"]
        if items["type"] == "integer":  # the token ids of one text
            one_text(shape)
            continue
        shape.update(minItems=1, maxItems=max_inputs)
        if items["type"] == "string":
            items.update(minLength=1, maxLength=max_length)
        else:
            one_text(items)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route: each status it may answer with the error body."""
    return {code: {"model": ErrorResponse} for code in codes}
