"""FastAPI application: assembles the routers, middleware and error handlers around the container."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from entrypoints.container import build_container
from entrypoints.http.errors import install_error_handlers
from entrypoints.http.lifecycle import start_services, stop_services
from entrypoints.http.middleware import AccessLog, BodySizeLimit
from entrypoints.http.routes import accounts, embed, hosted, metrics, openai, operations, providers
from entrypoints.http.schemas.common import document_limits
from entrypoints.settings import Settings, check_startup

VERSION = "0.2.0"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    check_startup(settings)
    container = build_container(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
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
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            app.openapi_schema = document_limits(
                schema,
                settings.max_batch_size,
                settings.max_input_length,
                min(settings.openai_max_inputs, settings.max_queued_texts),
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
