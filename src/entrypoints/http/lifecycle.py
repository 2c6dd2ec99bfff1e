"""What the server starts and stops around serving: the model (loaded in the background, its load time a metric),
the cache's preparation, and in hosted mode the database's schema and the usage writer. Stopping writes buffered
usage before the database closes (SIGTERM loses nothing)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field

from domain.ports import MetricsRecorder
from domain.services import ModelHost, ModelState
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
    """Start loading every served model (each in its own thread, at once); with metrics on, each one's load time is
    recorded once it is ready."""
    metrics = container.metrics()
    began = time.monotonic()
    for model in container.models().served:
        loading = model.host.start()
        if metrics.enabled:
            loading.add_done_callback(functools.partial(_record_load, metrics, model.host, began))


def _record_load(metrics: MetricsRecorder, host: ModelHost, began: float, _: object) -> None:
    if host.state is ModelState.READY:
        metrics.model_loaded(host.spec.name, time.monotonic() - began)


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
    for model in container.models().served:
        model.scheduler.shutdown()
    await asyncio.to_thread(container.cache().close)
    if started.hosted:
        container.hasher().close()
        await asyncio.to_thread(container.usage().close)
        await asyncio.to_thread(container.database().close)
    container.metrics().close()  # in multiprocess mode: this process's live gauges leave the sums
