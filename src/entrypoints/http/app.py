"""FastAPI application: routes translate HTTP <-> use cases; domain errors map through one table."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from domain.errors import DomainError
from domain.model import Caller, TextItem
from domain.use_cases import EmbedBatch, EmbeddingResult, EmbedOne, GetCacheStats, GetHealth, GetMetadata
from entrypoints.container import Container, build_container
from entrypoints.http.errors import domain_error_response, error_body, internal_error_response
from entrypoints.http.json_body import StrictJSONRoute
from entrypoints.http.middleware import AccessLog, BodySizeLimit
from entrypoints.http.responses import VectorJSONResponse
from entrypoints.http.schemas import (
    DIALECT_TAGS,
    CacheStatsResponse,
    EmbedAnyRequest,
    EmbedBatchRequest,
    EmbedBatchResponse,
    EmbedRequest,
    EmbedResponse,
    EmbedTextsResponse,
    ErrorResponse,
    HealthResponse,
    MetadataResponse,
    V1EmbedBatchRequest,
    V1EmbedBatchResponse,
    V1EmbedRequest,
    V1EmbedResponse,
    document_limits,
)
from entrypoints.settings import Settings, check_startup

log = logging.getLogger(__name__)

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 413, 422, 500, 503, 504)
}


# Dependencies are coroutines: FastAPI would run plain functions in a worker thread, a thread hop per dependency.


def container_of(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


async def embed_one(request: Request) -> EmbedOne:
    return container_of(request).embed_one()


async def embed_batch(request: Request) -> EmbedBatch:
    return container_of(request).embed_batch()


async def get_health(request: Request) -> GetHealth:
    return container_of(request).get_health()


async def get_metadata(request: Request) -> GetMetadata:
    return container_of(request).get_metadata()


async def get_cache_stats(request: Request) -> GetCacheStats:
    return container_of(request).get_cache_stats()


async def authenticated(request: Request, authorization: Annotated[str | None, Header()] = None) -> Caller:
    scheme, _, token = (authorization or "").partition(" ")
    presented = token.strip() if scheme.lower() == "bearer" else None
    return container_of(request).authenticate().execute(presented)


CallerDep = Annotated[Caller, Depends(authenticated)]

CACHE_HITS_HEADER = "X-Cache-Hits"
CACHE_HIT_INDEXES_HEADER = "X-Cache-Hit-Indexes"


def cache_headers(result: EmbeddingResult) -> dict[str, str]:
    """With a cache configured: how many inputs, and which (0-based, in request order), came from it."""
    if not result.cache_used:
        return {}
    hits = result.cache_hits
    return {CACHE_HITS_HEADER: str(len(hits)), CACHE_HIT_INDEXES_HEADER: ",".join(map(str, hits))}


def _location(loc: tuple[int | str, ...], union: bool) -> tuple[int | str, ...]:
    """On POST /embed (`union`), drop the dialect tag pydantic inserts: body.texts.texts.0 -> body.texts.0, and a
    body-wide error of the texts dialect, body.texts -> body."""
    if union and len(loc) > 1 and loc[0] == "body" and loc[1] in DIALECT_TAGS:
        return (loc[0], *loc[2:])
    return loc


NOT_AN_OBJECT = ("model_attributes_type", "dict_type", "model_type")


def _message(error: dict[str, Any], location: tuple[int | str, ...]) -> str:
    """pydantic's message; for a body that is not JSON, with the parser's reason (e.g. "no low surrogate in string");
    for a body that is no JSON object (sent without a JSON content type, say), what to send instead."""
    message = str(error.get("msg", ""))
    reason = (error.get("ctx") or {}).get("error")
    if error.get("type") == "json_invalid" and reason:
        return f"{message}: {reason}"
    if error.get("type") in NOT_AN_OBJECT and location == ("body",):
        return "the body must be a JSON object, sent with 'Content-Type: application/json'"
    return message


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    check_startup(settings)
    container = build_container(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        container.host().start()
        cache = container.cache()
        cache.start()  # prepared in the background; a cache that is down only logs
        try:
            yield
        finally:
            container.scheduler().shutdown()
            await asyncio.to_thread(cache.close)

    docs = settings.docs_enabled  # the API description holds no data; an operator may still hide it
    app = FastAPI(
        title="embedding-service",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url="/openapi.json" if docs else None,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
    )
    app.router.route_class = StrictJSONRoute
    app.state.container = container
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccessLog)

    @app.exception_handler(DomainError)
    async def on_domain_error(_: Request, exc: DomainError) -> JSONResponse:
        return domain_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        union = request.url.path == "/embed"
        problems = []
        for err in exc.errors():
            location = _location(tuple(err.get("loc", ())), union)
            problems.append({"location": ".".join(map(str, location)), "message": _message(err, location)})
        summary = "; ".join(f"{p['location']}: {p['message']}" for p in problems)
        return JSONResponse(error_body("invalid_request", f"invalid request body: {summary}", problems=problems), 422)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(kind, str(exc.detail)), exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled %s", type(exc).__name__, exc_info=exc)
        return internal_error_response()

    auth = [Depends(authenticated)]

    @app.post("/embed", response_model=EmbedResponse | EmbedTextsResponse, responses=ERRORS)
    async def embed(
        body: EmbedAnyRequest,
        caller: CallerDep,
        one: Annotated[EmbedOne, Depends(embed_one)],
        many: Annotated[EmbedBatch, Depends(embed_batch)],
    ) -> JSONResponse:
        if isinstance(body, EmbedRequest):
            result = await one.execute(body.input, body.model, body.encoding_format, caller)
            log.info("embedded 1 text (%d chars)", len(body.input))
            item = result.items[0]
            return VectorJSONResponse(
                {
                    "object": "list",
                    "model": result.model,
                    "data": [{"object": "embedding", "embedding": item.embedding, "index": item.index}],
                },
                headers=cache_headers(result),
            )
        started = time.perf_counter()
        items = [TextItem(id=None, text=text) for text in body.texts]
        result = await many.execute(items, body.model, body.encoding_format, caller)
        elapsed_ms = (time.perf_counter() - started) * 1000
        log.info("embedded %d texts (%d chars)", len(body.texts), sum(len(t) for t in body.texts))
        return VectorJSONResponse(
            {
                "embeddings": [item.embedding for item in result.items],
                "model": result.model,
                "processing_time_ms": round(elapsed_ms, 3),
            },
            headers=cache_headers(result),
        )

    @app.post("/embed/batch", response_model=EmbedBatchResponse, responses=ERRORS)
    async def embed_many(
        body: EmbedBatchRequest, caller: CallerDep, use_case: Annotated[EmbedBatch, Depends(embed_batch)]
    ) -> JSONResponse:
        items = [TextItem(id=i.id, text=i.text) for i in body.inputs]
        result = await use_case.execute(items, body.model, body.encoding_format, caller)
        log.info("embedded batch of %d texts (%d chars)", len(items), sum(len(i.text) for i in items))
        return VectorJSONResponse(
            {
                "object": "list",
                "model": result.model,
                "data": [{"id": item.id, "object": "embedding", "embedding": item.embedding} for item in result.items],
            },
            headers=cache_headers(result),
        )

    @app.post("/v1/embed", response_model=V1EmbedResponse, responses=ERRORS)
    async def v1_embed(
        body: V1EmbedRequest, caller: CallerDep, use_case: Annotated[EmbedOne, Depends(embed_one)]
    ) -> JSONResponse:
        result = await use_case.execute(body.text, body.model, body.encoding_format, caller)
        log.info("embedded 1 text (%d chars) for %s", len(body.text), caller.tenant)
        item = result.items[0]
        return VectorJSONResponse(
            {"embedding": item.embedding, "cached": item.cached, "dimensions": result.dimensions},
            headers=cache_headers(result),
        )

    @app.post("/v1/embed/batch", response_model=V1EmbedBatchResponse, responses=ERRORS)
    async def v1_embed_batch(
        body: V1EmbedBatchRequest, caller: CallerDep, use_case: Annotated[EmbedBatch, Depends(embed_batch)]
    ) -> JSONResponse:
        items = [TextItem(id=None, text=text) for text in body.texts]
        result = await use_case.execute(items, body.model, body.encoding_format, caller)
        log.info("embedded %d texts (%d chars) for %s", len(items), sum(len(t) for t in body.texts), caller.tenant)
        return VectorJSONResponse(
            {
                "embeddings": [item.embedding for item in result.items],
                "cached": [item.cached for item in result.items],
                "dimensions": result.dimensions,
            },
            headers=cache_headers(result),
        )

    @app.get("/v1/stats", response_model=CacheStatsResponse, responses=ERRORS)
    async def v1_stats(
        caller: CallerDep, use_case: Annotated[GetCacheStats, Depends(get_cache_stats)]
    ) -> CacheStatsResponse:
        report = await use_case.execute(caller)
        stats = report.stats
        return CacheStatsResponse(
            tenant=report.tenant, cache=report.backend, hits=stats.hits, misses=stats.misses, entries=stats.entries
        )

    @app.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def health(use_case: Annotated[GetHealth, Depends(get_health)]) -> JSONResponse:
        report = use_case.execute()
        body = HealthResponse(
            status=report.status,
            ready=report.ready,
            model=report.model,
            model_loaded=report.ready,
            model_name=report.model,
        )
        return JSONResponse(body.model_dump(), 200 if report.ready else 503)

    @app.get("/metadata", response_model=MetadataResponse, responses=ERRORS, dependencies=auth)
    async def metadata(use_case: Annotated[GetMetadata, Depends(get_metadata)]) -> MetadataResponse:
        info, limits = use_case.execute()
        spec = info.spec
        return MetadataResponse(
            model=spec.name,
            hub_id=spec.hub_id,
            dimension=spec.dimension,
            max_seq_length=spec.max_seq_length,
            revision=spec.revision,
            weights_sha256=spec.weights_sha256,
            library="sentence-transformers",
            library_version=info.library_version,
            device=info.device,
            backend=info.backend,
            precision=info.precision,
            min_cosine_vs_torch=info.min_cosine_vs_torch,
            max_batch_size=limits.max_batch_size,
            max_input_length=limits.max_input_length,
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            app.openapi_schema = document_limits(schema, settings.max_batch_size, settings.max_input_length)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
