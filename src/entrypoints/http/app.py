"""FastAPI application: assembles the routers, middleware and error handlers around the container."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from domain.services import ModelState
from entrypoints.container import build_container
from entrypoints.http.errors import install_error_handlers
from entrypoints.http.lifecycle import abandon_queued_work, drain_on_sigterm, start_services, stop_services
from entrypoints.http.middleware import AccessLog, BodySizeLimit, Draining, DrainState
from entrypoints.http.routes import accounts, embed, hosted, metrics, openai, operations, providers
from entrypoints.http.schemas.common import TokenIdLimits, document_limits
from entrypoints.settings import Settings, check_startup

VERSION = "0.2.0"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    check_startup(settings)
    container = build_container(settings)

    drain = DrainState()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        drain_on_sigterm(drain, settings.shutdown_drain_seconds, lambda: abandon_queued_work(container))
        started = await start_services(container, settings.hosted)
        try:
            yield
        finally:
            await asyncio.shield(stop_services(container, started))

    docs = settings.docs_enabled  # the API description holds no data; an operator may still hide it
    app = FastAPI(
        title="embedding-service",
        version=VERSION,
        lifespan=lifespan,
        openapi_url="/openapi.json" if docs else None,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        redirect_slashes=False,  # a 404 for "/v1/embeddings/", not a redirect to a Location built from Host
    )
    app.state.container = container
    app.state.drain = drain
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(Draining, drain=drain)
    observer = container.metrics() if settings.metrics_enabled else None
    app.add_middleware(AccessLog, metrics=observer, routes=app.router.routes)
    install_error_handlers(app)
    for router in (embed.router, hosted.router, openai.router, operations.router):
        app.include_router(router)
    if settings.hosted:
        app.include_router(accounts.router)
        app.include_router(providers.router)
    if settings.metrics_enabled:
        app.include_router(metrics.router)

    def openapi() -> dict[str, Any]:
        """The OpenAPI document with the configured limits and served models written in; the token ids the models
        take are written in once every model has loaded (until then the document is made again on each request)."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            served = container.models().served
            loaded = [model.host.embedder() for model in served if model.host.state is ModelState.READY]
            settled = all(model.host.state is not ModelState.LOADING for model in served)
            token_ids = (
                TokenIdLimits(
                    min(embedder.vocabulary_size for embedder in loaded),
                    frozenset().union(*(embedder.special_token_ids for embedder in loaded)),
                )
                if loaded and settled
                else None
            )
            documented = document_limits(
                schema,
                settings.max_batch_size,
                settings.max_input_length,
                min(settings.openai_max_inputs, settings.max_queued_texts),
                [alias for spec in container.specs() for alias in spec.aliases],
                [size for spec in container.specs() for size in (spec.dimension, *spec.matryoshka_dimensions)],
                token_ids,
            )
            if not settled:  # made again until every model has loaded (or failed): then once for all
                return documented
            app.openapi_schema = documented
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
