"""What the server starts and stops around serving: the model (loaded in the background, its load time a metric),
the cache's preparation, and in hosted mode the database's schema and the usage writer. Stopping writes buffered
usage before the database closes (SIGTERM loses nothing)."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from domain.errors import ShuttingDown
from domain.ports import MetricsRecorder
from domain.services import ModelHost, ModelState
from entrypoints.container import Container
from entrypoints.http.middleware import DrainState

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


def drain_on_sigterm(drain: DrainState, limit_s: float, out_of_time: Callable[[], int] = lambda: 0) -> None:
    """On SIGTERM, drain before the server stops: new requests are answered 503 shutting_down (a load balancer's
    health check fails, a retrying client goes to another replica) while those in flight finish, for at most
    `limit_s` (SHUTDOWN_DRAIN_SECONDS); then `out_of_time` answers those still waiting for a model 503 too, and the
    server's own handler stops it. A second SIGTERM ends the drain at once: those waiting are answered 503 now (not
    cut when the server stops) and the server's handler stops it.
    Installed over the server's handler, in the main thread only (uvicorn's; not under a test client)."""
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or not callable(previous) or limit_s <= 0:
        return
    loop = asyncio.get_running_loop()
    finishing: set[asyncio.Task[None]] = set()

    async def finish(sig: int, frame: FrameType | None) -> None:
        try:
            await drain_then_answer_the_rest()
        finally:  # whatever happened, the server stops
            previous(sig, frame)

    async def drain_then_answer_the_rest() -> None:
        log.info("SIGTERM: draining (%d requests in flight; new ones are answered 503)", drain.in_flight)
        drained = await drain.drained(limit_s)
        if drained:
            log.info("drained: no request in flight after %.1f s; stopping", time.monotonic() - drain.since)
        else:
            log.warning(
                "still %d requests in flight after SHUTDOWN_DRAIN_SECONDS=%s; stopping", drain.in_flight, limit_s
            )
            if out_of_time():  # those waiting for a model are answered 503 shutting_down, then the server stops
                await drain.drained(limit_s + 1)

    def start(sig: int, frame: FrameType | None) -> None:
        task = loop.create_task(finish(sig, frame))
        finishing.add(task)
        task.add_done_callback(finishing.discard)

    def stop_now(sig: int, frame: FrameType | None) -> None:
        try:
            log.warning("second SIGTERM: %d requests still waiting answered 503; stopping now", out_of_time())
        finally:
            previous(sig, frame)

    def on_sigterm(sig: int, frame: FrameType | None) -> None:
        if drain.draining:
            loop.call_soon_threadsafe(stop_now, sig, frame)  # on the loop: futures are set there only
            return
        drain.start()  # (no logging here, in the signal handler: the loop logs it)
        loop.call_soon_threadsafe(start, sig, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def abandon_queued_work(container: Container) -> int:
    """Every model's waiting requests answered 503 shutting_down; how many there were."""
    return sum(model.scheduler.abandon_all(ShuttingDown()) for model in container.models().served)


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
