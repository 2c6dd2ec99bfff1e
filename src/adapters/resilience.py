"""Resilience around outside stores: the fail-safe embedding cache requests go through (a storage failure is a miss,
an outage is probed in the background), the rate limiter that falls back to counting in the process while Redis is
down, and the one-line description of a driver's failure that logs may show."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TypeVar

from adapters.metrics import NoMetrics
from adapters.rate_limiting import InMemoryRateLimiter, window_index
from domain.errors import CacheUnavailable
from domain.model import Admission, CacheScope, CacheStats, Charge, Vector
from domain.ports import EmbeddingCache, MetricsRecorder, RateLimiter

log = logging.getLogger(__name__)


class OutageLog:
    """One warning when `what` starts failing, one line when it answers again; failures in between go to DEBUG. A
    failure of a call that began before the last recovery (`started`, time.monotonic()) is stale: it was waiting on
    the outage already logged, and does not start another one."""

    def __init__(self, what: str, level: int = logging.WARNING, traceback: bool = False) -> None:
        """`level` and `traceback`: of the first failure's line (a failing model's traceback tells the cause)."""
        self._what = what
        self._level = level
        self._traceback = traceback
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._recovered_at = -math.inf
        self._failures = 0

    def failed(self, operation: str, exc: BaseException, started: float | None = None) -> None:
        with self._lock:
            if started is not None and started < self._recovered_at:
                first = False  # stale: no new outage
            elif first := self._down_since is None:
                self._down_since, self._failures = time.monotonic(), 0
            self._failures += 1
        log.log(
            self._level if first else logging.DEBUG,
            "%s %s failed (%s)",
            self._what,
            operation,
            describe_failure(exc),
            exc_info=exc if first and self._traceback else None,
        )

    def answered(self) -> None:
        if self._down_since is None:  # the common case, without the lock
            return
        with self._lock:
            if self._down_since is None:
                return
            self._recovered_at = time.monotonic()
            down_for, failures, self._down_since = self._recovered_at - self._down_since, self._failures, None
        log.info("%s answers again after %.1f s (%d calls failed meanwhile)", self._what, down_for, failures)


def describe_failure(exc: BaseException) -> str:
    """One short line naming a storage failure: the driver's first line, never the statement or its parameters."""
    cause = getattr(exc, "orig", None) or exc
    first_line = (str(cause).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line}"[:200]


T = TypeVar("T")


class FailSafeCache:
    """The embedding cache as requests use it: a storage failure is logged and turns into a miss, never a failed
    request. Once it failed, no request touches the storage: a background probe prepares it again (a restored
    database may be empty) every `retry_after_s` until it answers, and only then do requests use it again. While the
    storage is being prepared (at start-up, by the probe) requests go without it rather than wait. A failure of a
    call that began before the last recovery is stale and does not start another outage."""

    def __init__(
        self,
        store: EmbeddingCache,
        shared_pool: bool = False,
        retry_after_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wait_s: float = 2.0,
        metrics: MetricsRecorder | None = None,
    ) -> None:
        self._metrics: MetricsRecorder = metrics or NoMetrics()
        self._store = store
        self._shared_pool = shared_pool
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._wait_s = wait_s
        self._busy = 0  # calls dropped because no worker thread took them in time, since the last warning
        self._busy_logged_at: float | None = None
        self._lock = threading.Lock()
        self._prepare_lock = threading.Lock()
        self._prepared = False
        self._down_since: float | None = None
        self._generation = 0  # one more after each recovery
        self._skipped = 0
        self._probe: threading.Timer | None = None
        self._starter: threading.Thread | None = None
        self._closed = False
        self._settled = False

    @property
    def enabled(self) -> bool:
        return self._store.backend != "none"

    @property
    def backend(self) -> str:
        return self._store.backend

    @property
    def available(self) -> bool:
        with self._lock:
            return self._down_since is None

    @property
    def settled(self) -> bool:
        """The start-up preparation has finished, one way or the other (no cache: always)."""
        return self._settled or not self.enabled

    def start(self) -> None:
        """Prepare the storage in a background thread (server start-up); until that has finished, requests go
        without the cache instead of preparing it themselves."""
        with self._lock:
            if self._starter is not None:
                return
            self._starter = threading.Thread(target=self.prepare, name="cache-prepare", daemon=True)
        self._starter.start()

    def prepare(self) -> bool:
        """Create or migrate the storage now, after any preparation in progress; False, logged, when it fails."""
        with self._lock:
            generation = self._generation
        try:
            with self._prepare_lock:
                return self._prepare_held()
        except Exception as exc:
            self._failed("prepare", exc, generation)
            return False
        finally:
            self._settled = True

    def lookup(self, scope: CacheScope, keys: Sequence[bytes], shared_pool: bool = True) -> dict[bytes, Vector]:
        """The tenant's entries, then the shared pool's when it is read (configured, and `shared_pool`)."""
        pool = self._shared_pool and shared_pool
        found = self._run("lookup", lambda: self._store.get(scope, keys, shared_pool=pool))
        return found or {}

    def save(self, scope: CacheScope, vectors: Mapping[bytes, Vector]) -> bool:
        def put() -> bool:
            self._store.put(scope, vectors)
            return True

        return self._run("store", put) is not None

    async def lookup_in_time(
        self, scope: CacheScope, keys: Sequence[bytes], shared_pool: bool = True
    ) -> dict[bytes, Vector]:
        """lookup() in a worker thread, waited for at most `wait_s` (queueing for a thread included). Metrics count
        each key as a hit or a miss (a lookup that failed or was skipped: all misses)."""
        found = await self._in_time("lookup", self.lookup, scope, keys, shared_pool) or {}
        if self._metrics.enabled:
            hits = sum(1 for key in keys if key in found)
            self._metrics.cache_lookup(hits, len(keys) - hits)
        return found

    async def save_in_time(self, scope: CacheScope, vectors: Mapping[bytes, Vector]) -> None:
        """save() in a worker thread, waited for at most `wait_s` (queueing for a thread included)."""
        await self._in_time("store", self.save, scope, vectors)

    async def _in_time(self, what: str, call: Callable[..., T], *args: object) -> T | None:
        """Under a burst, cache calls queue for the few worker threads behind calls of requests that will be refused
        anyway, and a request would wait for its lookup (and its store) far past its deadline. A call no thread has
        taken within `wait_s` is dropped (never run) and the request goes on without the cache: not a failure of
        the storage, so no outage; a warning says how many went without, at most once a minute. A call that is
        running is waited for: the storage bounds it (a failure there is an outage, logged as such)."""
        began = threading.Event()

        def run() -> T:
            began.set()
            return call(*args)

        pending = asyncio.ensure_future(asyncio.to_thread(run))
        try:
            return await asyncio.wait_for(asyncio.shield(pending), timeout=self._wait_s)
        except TimeoutError:
            if began.is_set():  # running, not queued: the storage's own timeout bounds it
                return await pending
            pending.cancel()  # still queued: it never runs
            now = self._clock()
            with self._lock:
                self._busy += 1
                due = self._busy_logged_at is None or now - self._busy_logged_at >= 60
                if due:
                    busy, self._busy, self._busy_logged_at = self._busy, 0, now
            if due:
                log.warning(
                    "embedding cache (%s) %s waited over %g s for a worker thread; %d calls since the last such "
                    "warning went without the cache",
                    self.backend,
                    what,
                    self._wait_s,
                    busy,
                )
            return None

    def stats(self, tenant: str) -> CacheStats:
        stats = self._run("stats", lambda: self._store.stats(tenant))
        if stats is None:
            raise CacheUnavailable()
        return stats

    def close(self) -> None:
        """Stop probing and close the storage, once a preparation in progress (bounded by its timeouts) is over."""
        with self._lock:
            self._closed = True
            probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
        with self._prepare_lock:
            try:
                self._store.close()
            except Exception as exc:
                log.warning("closing the embedding cache failed (%s)", describe_failure(exc))

    def _run(self, what: str, operation: Callable[[], T]) -> T | None:
        with self._lock:
            if self._down_since is not None:
                self._skipped += 1
                return None
            if self._starter is not None and not self._settled:
                return None  # the start-up preparation is under way
            generation = self._generation
        try:
            if not self._ensure_prepared():
                return None
            return operation()
        except Exception as exc:
            self._failed(what, exc, generation)
            return None

    def _ensure_prepared(self) -> bool:
        """Prepare the storage on first use; False while another thread is preparing it (do not wait for that)."""
        if self._prepared:
            return True
        if not self._prepare_lock.acquire(blocking=False):
            return False
        try:
            return self._prepare_held()
        finally:
            self._prepare_lock.release()

    def _prepare_held(self) -> bool:
        """With the prepare lock held: prepare the storage unless it is prepared; False once the cache is closed."""
        if self._closed:
            return False
        if not self._prepared:
            self._store.prepare()
            self._prepared = True
        return True

    def _failed(self, what: str, exc: Exception, generation: int) -> None:
        with self._lock:
            if generation != self._generation:  # began before the last recovery: says nothing about now
                stale = True
            else:
                stale = False
                first = self._down_since is None
                if first:
                    self._down_since, self._skipped = self._clock(), 0
                self._prepared = False  # the database may come back empty: the probe migrates first
                if self._probe is None and not self._closed:
                    self._probe = threading.Timer(self._retry_after_s, self._try_again)
                    self._probe.daemon = True
                    self._probe.start()
        if stale:
            log.debug("embedding cache (%s) %s failed before the last recovery (%s)", self.backend, what, exc)
            return
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "embedding cache (%s) %s failed (%s); embedding without it, next try in %g s",
            self._store.backend,
            what,
            describe_failure(exc),
            self._retry_after_s,
        )

    def _try_again(self) -> None:
        """The background probe: prepare the storage; on success requests use it again, else try later."""
        with self._lock:
            self._probe = None
            generation = self._generation
        try:
            with self._prepare_lock:
                if not self._prepare_held():  # after a failure nothing counts as prepared: this prepares
                    return
        except Exception as exc:
            self._failed("probe", exc, generation)
            return
        with self._lock:
            if self._down_since is None:
                return
            down_for, skipped = self._clock() - self._down_since, self._skipped
            self._down_since = None
            self._generation += 1
        log.info(
            "embedding cache (%s) is back after %.1f s; %d calls went without it meanwhile",
            self._store.backend,
            down_for,
            skipped,
        )


class FailoverRateLimiter:
    """The primary limiter (Redis) while it answers; when it raises, the fallback (in this process) answers instead
    and the primary is left alone for `retry_after_s`, after which one call tries it again. One warning is logged
    per outage and one line when the primary answers again. The fallback starts each window from the primary's last
    count this process saw (not from zero), and its answers are marked provisional.

    A refund goes where its hit was consumed: each charge of a hit the fallback allowed is remembered by (charge,
    now), as `refund` receives them (a refund may give back only some of a hit's charges), for the last
    `remembered_refunds` of them; any other charge is refunded to the primary, and is lost (the units stay consumed
    until their window ends) when the primary cannot be reached."""

    def __init__(
        self,
        primary: RateLimiter,
        fallback: InMemoryRateLimiter,
        retry_after_s: float = 5.0,
        *,
        remembered_refunds: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._primary = primary
        self._fallback = fallback
        self._retry_after_s = retry_after_s
        self._remembered_refunds = remembered_refunds
        self._clock = clock
        self._lock = threading.Lock()
        self._outage = False
        self._retry_at = float("-inf")
        self._answered_by_fallback: OrderedDict[tuple[Charge, float], int] = OrderedDict()
        self._last_seen: OrderedDict[tuple[str, int, int], int] = OrderedDict()

    @property
    def in_outage(self) -> bool:
        return self._outage

    def hit(self, charges: Sequence[Charge], now: float) -> Admission:
        if self._primary_due():
            try:
                answer = self._primary.hit(charges, now)
            except Exception as error:
                self._primary_failed(error)
            else:
                self._primary_answered()
                self._saw(charges, answer, now)
                return answer
        for charge in charges:  # start from what the shared store had counted, not from zero
            seen = self._last_seen.get((charge.counter, charge.window_s, window_index(charge, now)))
            if seen is not None:
                self._fallback.seed(charge, now, seen)
        answer = self._fallback.hit(charges, now)
        if answer.allowed:
            for charge in charges:
                if charge.cost and charge.refundable:  # nothing else is ever given back
                    self._remember(charge, now)
        return replace(answer, provisional=True)

    def _saw(self, charges: Sequence[Charge], answer: Admission, now: float) -> None:
        """Remember the shared store's counts of the windows just used (the last `remembered_refunds` of them)."""
        with self._lock:
            for charge, window in zip(charges, answer.windows, strict=True):
                slot = (charge.counter, charge.window_s, window_index(charge, now))
                self._last_seen[slot] = window.used
                self._last_seen.move_to_end(slot)
            while len(self._last_seen) > self._remembered_refunds:
                self._last_seen.popitem(last=False)

    def refund(self, charges: Sequence[Charge], now: float) -> None:
        counted_here = [charge for charge in charges if self._forget(charge, now)]
        if counted_here:
            self._fallback.refund(counted_here, now)
        elsewhere = [charge for charge in charges if charge not in counted_here]
        if elsewhere and self._primary_due():
            try:
                self._primary.refund(elsewhere, now)
            except Exception as error:
                self._primary_failed(error)
            else:
                self._primary_answered()

    def _primary_due(self) -> bool:
        """Whether to call the primary; during an outage only the first call after `retry_after_s` does."""
        with self._lock:
            if not self._outage:
                return True
            if self._clock() < self._retry_at:
                return False
            self._retry_at = self._clock() + self._retry_after_s
            return True

    def _primary_failed(self, error: Exception) -> None:
        with self._lock:
            self._retry_at = self._clock() + self._retry_after_s
            if self._outage:
                return
            self._outage = True
        log.warning(
            "Rate limiter: Redis is unreachable (%s); counting in this process only, retrying every %.1f s",
            type(error).__name__,
            self._retry_after_s,
        )

    def _primary_answered(self) -> None:
        with self._lock:
            if not self._outage:
                return
            self._outage = False
        log.info("Rate limiter: Redis recovered; counting in Redis again")

    def _remember(self, charge: Charge, now: float) -> None:
        with self._lock:
            self._answered_by_fallback[charge, now] = self._answered_by_fallback.get((charge, now), 0) + 1
            self._answered_by_fallback.move_to_end((charge, now))
            while len(self._answered_by_fallback) > self._remembered_refunds:
                self._answered_by_fallback.popitem(last=False)

    def _forget(self, charge: Charge, now: float) -> bool:
        with self._lock:
            count = self._answered_by_fallback.get((charge, now), 0)
            if count == 0:
                return False
            if count == 1:
                del self._answered_by_fallback[charge, now]
            else:
                self._answered_by_fallback[charge, now] = count - 1
            return True
