"""OpenAI's embeddings API: POST /v1/embeddings and GET /v1/models, so that a tool built on the openai SDK needs
only a new base_url. Any key this service accepts works; an account's key is metered like on the hosted routes
(quotas, usage, x-ratelimit-* headers). Errors on these paths use OpenAI's envelope (see errors.py)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from domain.model import Caller, InputType, TextItem
from domain.use_cases import EmbedInputs, ListModels
from entrypoints.http.deps import CallerDep, counted, headers_for, metered, use
from entrypoints.http.errors import OPENAI_TAG
from entrypoints.http.json_body import StrictJSONRoute
from entrypoints.http.responses import VectorJSONResponse
from entrypoints.http.schemas.openai import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    Model,
    ModelList,
    openai_error_responses,
    render_embeddings,
    render_model,
    render_models,
)

log = logging.getLogger("entrypoints.http.app")

router = APIRouter(prefix="/v1", route_class=StrictJSONRoute, tags=[OPENAI_TAG])
CountedCaller = Annotated[Caller, Depends(counted)]


@router.post(
    "/embeddings",
    response_model=EmbeddingsResponse,
    responses=openai_error_responses(400, 401, 404, 413, 429, 500, 503, 504),
)
async def create_embeddings(
    request: Request,
    body: EmbeddingsRequest,
    caller: CallerDep,
    use_case: Annotated[EmbedInputs, use(EmbedInputs)],
) -> JSONResponse:
    items = [TextItem(id=None, text=value) for value in body.inputs()]
    check = lambda: use_case.check(items, body.model, caller=caller, dimensions=body.dimensions)  # noqa: E731
    async with metered(request, caller, len(items), check):
        result = await use_case.execute(
            items, body.model, caller, body.dimensions, input_type=InputType(body.input_type)
        )
    log.debug("embedded %d inputs (%d tokens) for %s", len(items), result.tokens or 0, caller.tenant)
    rendered = render_embeddings(result, body.model or result.model, body.encoding_format)
    return VectorJSONResponse(rendered, headers=headers_for(request, result))


@router.get("/models", response_model=ModelList, responses=openai_error_responses(401, 429))
async def list_models(
    request: Request, _: CountedCaller, use_case: Annotated[ListModels, use(ListModels)]
) -> JSONResponse:
    return JSONResponse(render_models(use_case.execute()), headers=headers_for(request))


@router.get("/models/{model:path}", response_model=Model, responses=openai_error_responses(401, 404, 429))
async def retrieve_model(
    request: Request, model: str, _: CountedCaller, use_case: Annotated[ListModels, use(ListModels)]
) -> JSONResponse:
    return JSONResponse(render_model(use_case.find(model)), headers=headers_for(request))
