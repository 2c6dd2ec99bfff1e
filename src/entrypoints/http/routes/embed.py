"""POST /embed (peoplepad's one text, or the events app's list of texts) and POST /embed/batch (peoplepad)."""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from domain.model import InputType, TextItem
from domain.use_cases import EmbedBatch, EmbedOne
from entrypoints.http.deps import CallerDep, headers_for, metered, use
from entrypoints.http.json_body import StrictJSONRoute
from entrypoints.http.responses import VectorJSONResponse
from entrypoints.http.schemas.common import error_responses
from entrypoints.http.schemas.embed import (
    EmbedAnyRequest,
    EmbedBatchRequest,
    EmbedBatchResponse,
    EmbedRequest,
    EmbedResponse,
    EmbedTextsResponse,
    render_batch,
    render_one,
    render_texts,
)

log = logging.getLogger("entrypoints.http.app")
ERRORS = error_responses(400, 401, 413, 422, 429, 500, 503, 504)

router = APIRouter(route_class=StrictJSONRoute, tags=["embed"])


@router.post("/embed", response_model=EmbedResponse | EmbedTextsResponse, responses=ERRORS)
async def embed(
    request: Request,
    body: EmbedAnyRequest,
    caller: CallerDep,
    one: Annotated[EmbedOne, use(EmbedOne)],
    many: Annotated[EmbedBatch, use(EmbedBatch)],
) -> JSONResponse:
    if isinstance(body, EmbedRequest):
        one_text = [TextItem(id=None, text=body.input)]
        async with metered(request, caller, 1, lambda: one.check(one_text, body.model, body.encoding_format, caller)):
            result = await one.execute(
                body.input, body.model, body.encoding_format, caller, input_type=InputType(body.input_type)
            )
        log.debug("embedded 1 text (%d chars)", len(body.input))
        return VectorJSONResponse(render_one(result), headers=headers_for(request, result))
    started = time.perf_counter()
    items = [TextItem(id=None, text=text) for text in body.texts]
    async with metered(
        request, caller, len(items), lambda: many.check(items, body.model, body.encoding_format, caller)
    ):
        result = await many.execute(
            items, body.model, body.encoding_format, caller, input_type=InputType(body.input_type)
        )
    log.debug("embedded %d texts (%d chars)", len(body.texts), sum(len(t) for t in body.texts))
    return VectorJSONResponse(render_texts(result, started), headers=headers_for(request, result))


@router.post("/embed/batch", response_model=EmbedBatchResponse, responses=ERRORS)
async def embed_batch(
    request: Request, body: EmbedBatchRequest, caller: CallerDep, use_case: Annotated[EmbedBatch, use(EmbedBatch)]
) -> JSONResponse:
    items = [TextItem(id=i.id, text=i.text) for i in body.inputs]
    async with metered(
        request, caller, len(items), lambda: use_case.check(items, body.model, body.encoding_format, caller)
    ):
        result = await use_case.execute(
            items, body.model, body.encoding_format, caller, input_type=InputType(body.input_type)
        )
    log.debug("embedded batch of %d texts (%d chars)", len(items), sum(len(i.text) for i in items))
    return VectorJSONResponse(render_batch(result), headers=headers_for(request, result))
