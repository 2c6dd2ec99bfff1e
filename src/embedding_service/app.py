"""ASGI entry point for uvicorn's own command line, as the events app's deployment (ECS task and compose snippet)
starts the service:

    python -m uvicorn embedding_service.app:app --host 0.0.0.0 --port 8003 --workers 1

`app` is the application `embedding-service serve` runs, with settings from the environment and `.env`. uvicorn's
command line chooses its HTTP protocol before importing this module, so the header-size and slow-client limits
need `--http entrypoints.http.protocol:GuardedHttpToolsProtocol`, or UVICORN_HTTP set to that (the image does).
"""

from __future__ import annotations

import logging

from entrypoints.http.app import create_app
from entrypoints.settings import Settings, configure_logging

settings = Settings()
configure_logging()
logging.getLogger().setLevel(settings.log_level)
app = create_app(settings)
