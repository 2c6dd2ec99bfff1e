"""What the server starts and stops around serving: the model (loaded in the background, its load time a metric),
the cache's preparation, and in hosted mode the database's schema and the usage writer. Stopping writes buffered
usage before the database closes (SIGTERM loses nothing)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from domain.services import ModelState
from entrypoints.container import Container

log = logging.getLogger(__name__)

DATABASE_RETRY_S = 5.0


@dataclass
class Started:
    hosted: bool
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


async def start_services(container: Container, hosted: bool) -> Started:
    _time_model_load(container)
    container.cache().start()  # prepared in the background; a cache that is down only logs
    started = Started(hosted)
    if hosted:
        container.usage().start()
        started.tasks.append(asyncio.create_task(_prepare_database(container)))
        await asyncio.to_thread(container.hasher)  # its dummy bcrypt hash takes ~0.2 s: not on the event loop
    return started


def _time_model_load(container: Container) -> None:
    """Start loading the model; with metrics on, its load time is recorded once it is ready."""
    host, metrics = container.host(), container.metrics()
    began = time.monotonic()
    loading = host.start()
    if metrics.enabled:

        def loaded(_: object) -> None:
            if host.state is ModelState.READY:
                metrics.model_loaded(host.spec.name, time.monotonic() - began)

        loading.add_done_callback(loaded)


async def _prepare_database(container: Container) -> None:
    """Create or upgrade the schema; while the database cannot be reached, account routes answer 503 and this
    tries again every few seconds."""
    warned = False
    while True:
        try:
            await asyncio.to_thread(container.database().prepare)
            if warned:
                log.info("the account database is reachable again")
            return
        except Exception as exc:
            if not warned:
                log.warning("preparing the account database failed (%s); retrying", type(exc).__name__)
                warned = True
            await asyncio.sleep(DATABASE_RETRY_S)


async def stop_services(container: Container, started: Started) -> None:
    for task in started.tasks:
        task.cancel()
    container.scheduler().shutdown()
    await asyncio.to_thread(container.cache().close)
    if started.hosted:
        container.hasher().close()
        await asyncio.to_thread(container.usage().close)
        await asyncio.to_thread(container.database().close)
    container.metrics().close()  # in multiprocess mode: this process's live gauges leave the sums
