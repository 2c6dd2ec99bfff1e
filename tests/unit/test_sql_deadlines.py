"""The client-side deadline machinery on its own: which connections a passed deadline aborts, and which never."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import exc as sqlalchemy_exc

from adapters.sql_deadlines import BoundedConnector, ConnectionWatchdog, DeadlineExceeded


class Connection:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


def wait_for(condition: Any, within_s: float = 2.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_passed_deadline_aborts_the_connection_the_operation_holds() -> None:
    aborted: list[str] = []
    watchdog = ConnectionWatchdog(0.1, lambda c: aborted.append(c.name))
    with pytest.raises(DeadlineExceeded, match=r"did not answer within 0\.1 s"), watchdog.operation():
        assert watchdog.attach(Connection("held"))
        wait_for(lambda: aborted == ["held"])
        raise OSError("server closed the connection unexpectedly")  # what the aborted read raises


def test_a_late_checkout_leaves_the_healthy_connection_alone() -> None:
    aborted: list[str] = []
    watchdog = ConnectionWatchdog(0.05, lambda c: aborted.append(c.name))
    with watchdog.operation():
        time.sleep(0.1)  # waited for the pool past the deadline
        assert watchdog.attach(Connection("pooled")) is False  # no error here: the pool keeps the connection
        with pytest.raises(DeadlineExceeded):
            watchdog.check()  # the operation learns it is late
    time.sleep(0.05)
    assert aborted == []


def test_a_connection_let_go_is_never_aborted_whichever_thread_lets_go() -> None:
    aborted: list[str] = []
    watchdog = ConnectionWatchdog(0.1, lambda c: aborted.append(c.name))
    connection = Connection("returned")
    with watchdog.operation():
        assert watchdog.attach(connection)
        releaser = threading.Thread(target=watchdog.detach, args=(connection,))  # e.g. closed by the pool
        releaser.start()
        releaser.join()
        time.sleep(0.2)
    assert aborted == []


def test_one_failing_abort_does_not_stop_the_watchdog() -> None:
    aborted: list[str] = []

    def abort(connection: Connection) -> None:
        if connection.name == "broken":
            raise OSError("too many open files")
        aborted.append(connection.name)

    watchdog = ConnectionWatchdog(0.05, abort)
    with watchdog.operation():
        watchdog.attach(Connection("broken"))
        watchdog.attach(Connection("next"))
        wait_for(lambda: aborted == ["next"])


def test_connects_the_caller_gave_up_on_are_cancelled_or_closed() -> None:
    watchdog = ConnectionWatchdog(0.1, lambda c: None)
    connector = BoundedConnector(watchdog, threads=1)
    opened: list[Connection] = []

    def slow_open() -> Connection:
        time.sleep(0.3)
        opened.append(Connection(f"c{len(opened)}"))
        return opened[-1]

    for _ in range(2):  # the first is being opened when its caller gives up; the second is still queued
        with pytest.raises(DeadlineExceeded), watchdog.operation():
            connector.connect(slow_open)
    wait_for(lambda: opened and opened[0].closed)
    time.sleep(0.4)
    assert len(opened) == 1  # the queued one never ran
    connector.close()


def test_a_bound_of_the_drivers_own_that_runs_out_with_the_deadline_is_reported_as_the_deadline() -> None:
    """The pool's wait has the operation's length and starts after it: its TimeoutError may come before the
    watchdog thread has marked the operation expired (CI saw it), and must still read as DeadlineExceeded."""
    watchdog = ConnectionWatchdog(0.05, lambda c: None)
    watchdog._thread = threading.current_thread()  # an alive "watchdog" that never marks anything: the race, held
    with pytest.raises(DeadlineExceeded), watchdog.operation():
        time.sleep(0.06)
        raise TimeoutError("QueuePool limit of size 1 overflow 1 reached, connection timed out, timeout 0.05")
    with pytest.raises(TimeoutError, match="QueuePool") as raised, watchdog.operation():
        raise TimeoutError("QueuePool limit reached")  # before its deadline: the driver's own error, as it is
    assert not isinstance(raised.value, DeadlineExceeded)
    with pytest.raises(DeadlineExceeded), watchdog.operation():  # what SQLAlchemy's pool raises
        time.sleep(0.06)
        raise sqlalchemy_exc.TimeoutError("QueuePool limit of size 1 overflow 1 reached")


def test_an_error_that_is_no_timeout_stays_what_it_is_even_past_the_deadline() -> None:
    """A unique-key violation that lands just after the deadline is still a conflict (409), not an outage."""
    watchdog = ConnectionWatchdog(0.05, lambda c: None)
    watchdog._thread = threading.current_thread()
    with pytest.raises(sqlalchemy_exc.IntegrityError), watchdog.operation():
        time.sleep(0.06)
        raise sqlalchemy_exc.IntegrityError("INSERT ...", {}, Exception("duplicate key"))
