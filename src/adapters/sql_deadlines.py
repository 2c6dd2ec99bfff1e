"""Client-side time limits for database work.

A server-side statement_timeout cannot help when the database stops answering while the connection stays open (a
relay or firewall that stops forwarding, a frozen host): the client waits on a socket forever. Here every operation
gets a deadline on the client; a watchdog thread aborts the connections the operation holds when it passes (a
socket shutdown for PostgreSQL, sqlite3's interrupt() for SQLite), so the blocked read fails at once and the caller's
fail-safe path takes over. Connections are attached to the operation running in the current thread when the pool
hands them out and detached when they go back or are closed, under one lock with the watchdog, so a connection
another operation has since checked out, or whose socket number was reused, is never aborted. New network
connections are opened in a helper thread the operation waits for only until its deadline (libpq would otherwise
wait at least 2 s, and name resolution has no bound at all).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import exc as sqlalchemy_exc

log = logging.getLogger(__name__)


class DeadlineExceeded(TimeoutError):
    """The database did not finish an operation within its client-side time limit."""


# what running out of time looks like from below: the pool's wait (sqlalchemy.exc.TimeoutError), a cancelled
# statement or a connection cut (OperationalError, InterfaceError), the socket itself
_TIMED_OUT = (
    TimeoutError,
    OSError,
    sqlalchemy_exc.TimeoutError,
    sqlalchemy_exc.OperationalError,
    sqlalchemy_exc.InterfaceError,
)


@dataclass(eq=False)
class _Operation:
    timeout_s: float
    deadline: float
    connections: list[Any] = field(default_factory=list)
    expired: bool = False
    done: bool = False


def shutdown_socket(dbapi_connection: Any) -> None:
    """Abort a psycopg connection from another thread: shut its socket down (the fd stays open, so it cannot be
    reused meanwhile); the blocked read returns at once and psycopg marks the connection broken."""
    try:
        fd = dbapi_connection.fileno()
    except Exception:
        return  # already closed
    duplicate = socket.socket(fileno=os.dup(fd))
    try:
        duplicate.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        duplicate.close()


def interrupt_sqlite(dbapi_connection: Any) -> None:
    """Abort a sqlite3 connection's running statement (sqlite3_interrupt is safe from any thread)."""
    try:
        dbapi_connection.interrupt()
    except Exception:
        return


class ConnectionWatchdog:
    """Deadlines for database operations, enforced by one watchdog thread started on first use. Which operation
    holds which connection is kept under the watchdog's lock: a connection is aborted only while the operation
    whose deadline passed holds it."""

    def __init__(self, timeout_s: float, abort: Callable[[Any], None]) -> None:
        self._timeout_s = timeout_s
        self._abort = abort
        self._local = threading.local()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, _Operation]] = []
        self._order = itertools.count()
        self._holders: dict[int, tuple[Any, _Operation]] = {}  # id(connection) -> (connection, its operation)
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    @contextmanager
    def operation(self, timeout_s: float | None = None) -> Iterator[None]:
        """Run the block under a deadline (`timeout_s`, default the watchdog's); when it has passed, the block's
        database error is raised as DeadlineExceeded."""
        limit = self._timeout_s if timeout_s is None else timeout_s
        op = _Operation(timeout_s=limit, deadline=time.monotonic() + limit)
        with self._lock:
            self._schedule(op)
        outer = getattr(self._local, "op", None)
        self._local.op = op
        try:
            yield
        except Exception as exc:
            # expired: the watchdog aborted a connection; past the deadline, a bound of the driver's own ran out
            # first (the pool's wait, which starts after the operation and has the same length; the server's
            # statement_timeout). Any other error (a constraint, a caller's bad value) stays what it is.
            if op.expired or (time.monotonic() >= op.deadline and isinstance(exc, _TIMED_OUT)):
                raise DeadlineExceeded(f"the database did not answer within {op.timeout_s:g} s") from exc
            raise
        finally:
            self._local.op = outer
            with self._lock:
                op.done = True
                for connection in op.connections:  # e.g. invalidated ones, whose check-in named no connection
                    self._holders.pop(id(connection), None)
                op.connections.clear()

    def extend(self, timeout_s: float) -> None:
        """Give the current operation `timeout_s` from now (a schema migration may take longer than a lookup)."""
        op = self._current()
        if op is None:
            return
        with self._lock:
            if op.expired:
                raise DeadlineExceeded(f"the database did not answer within {op.timeout_s:g} s")
            op.timeout_s, op.deadline = timeout_s, time.monotonic() + timeout_s
            self._schedule(op)

    def attach(self, dbapi_connection: Any) -> bool:
        """The pool handed `dbapi_connection` to the current operation: abort it if the deadline passes. False when
        the deadline has passed already (the connection is then left alone: it is healthy, we are late)."""
        op = self._current()
        if op is None:
            return True
        with self._lock:
            if op.expired or time.monotonic() >= op.deadline:
                op.expired = True
                return False
            op.connections.append(dbapi_connection)
            self._holders[id(dbapi_connection)] = (dbapi_connection, op)
        return True

    def detach(self, dbapi_connection: Any) -> None:
        """The connection goes back to the pool, or is about to be closed: no deadline may abort it any more."""
        if dbapi_connection is None:
            return
        with self._lock:
            _, op = self._holders.pop(id(dbapi_connection), (None, None))
            if op is not None and dbapi_connection in op.connections:
                op.connections.remove(dbapi_connection)

    def check(self) -> None:
        """Raise DeadlineExceeded when the current operation is out of time."""
        if self.remaining() is None:
            return

    def expired(self) -> bool:
        op = self._current()
        return op is not None and (op.expired or time.monotonic() >= op.deadline)

    def remaining(self) -> float | None:
        """Seconds left to the current operation (None outside one); raises DeadlineExceeded when none are."""
        op = self._current()
        if op is None:
            return None
        left = op.deadline - time.monotonic()
        if op.expired or left <= 0:
            op.expired = True
            raise DeadlineExceeded(f"the database did not answer within {op.timeout_s:g} s")
        return left

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._changed.notify()

    def _current(self) -> _Operation | None:
        op: _Operation | None = getattr(self._local, "op", None)
        return op

    def _schedule(self, op: _Operation) -> None:
        heapq.heappush(self._heap, (op.deadline, next(self._order), op))
        if self._thread is None or not self._thread.is_alive():
            self._closed = False
            self._thread = threading.Thread(target=self._watch, name="db-watchdog", daemon=True)
            self._thread.start()
        self._changed.notify()

    def _watch(self) -> None:
        with self._lock:
            while not self._closed:
                if not self._heap:
                    self._changed.wait()
                    continue
                deadline, _, op = self._heap[0]
                if op.done or deadline != op.deadline:  # finished, or extended (its new entry is queued)
                    heapq.heappop(self._heap)
                    continue
                left = deadline - time.monotonic()
                if left > 0:
                    self._changed.wait(left)
                    continue
                heapq.heappop(self._heap)
                op.expired = True
                for connection in op.connections:
                    try:
                        self._abort(connection)
                    except Exception:  # the watchdog must outlive any one connection (EMFILE on dup, say)
                        log.exception("aborting a database connection failed")
                if op.connections:
                    log.debug("aborted %d database connection(s) after %g s", len(op.connections), op.timeout_s)


class BoundedConnector:
    """Opens network connections in helper threads; the caller waits for one only until its operation's deadline.
    A connection that arrives after its caller gave up is closed."""

    def __init__(self, watchdog: ConnectionWatchdog, threads: int) -> None:
        self._watchdog = watchdog
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="db-connect")

    def connect(self, open_connection: Callable[[], Any]) -> Any:
        left = self._watchdog.remaining()
        if left is None:
            return open_connection()
        future = self._executor.submit(open_connection)
        try:
            return future.result(timeout=left)
        except FutureTimeout:
            if not future.cancel():  # already connecting: close what it brings
                future.add_done_callback(_close_late_arrival)
            raise DeadlineExceeded(f"no database connection within {self._watchdog.timeout_s:g} s") from None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _close_late_arrival(future: Future[Any]) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    try:
        future.result().close()
    except Exception:
        return
