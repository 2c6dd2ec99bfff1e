"""Client-side bounds of the SQL caches: a database that stops answering (connection open, no replies) fails each
operation within the timeout, whatever the operation was waiting for; and hit counting stays linear on a table the
planner has no statistics for."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event, text

from adapters.sql.cache import PostgresEmbeddingCache, SqliteEmbeddingCache
from adapters.sql_deadlines import DeadlineExceeded
from domain.model import CacheScope
from tests.support import TcpProxy, postgres_database, relayed_database, run_together

SCOPE = CacheScope("acme", "model@rev", "variant")
TIMEOUT_S = 1.0
SLACK_S = 1.0  # scheduling noise on a loaded 2-core machine


@contextmanager
def relayed_cache(pool_size: int = 5) -> Iterator[tuple[PostgresEmbeddingCache, TcpProxy]]:
    with relayed_database() as (_, relayed, proxy):
        cache = PostgresEmbeddingCache(relayed, timeout_s=TIMEOUT_S, pool_size=pool_size)
        cache.prepare()
        try:
            yield cache, proxy
        finally:
            proxy.resume()  # (before closing: the pool's connections are closed over it)
            cache.close()


def timed(call: Any, give_up_s: float = 10.0) -> tuple[float, BaseException | None]:
    """How long `call` took and what it raised; a call still blocked after `give_up_s` fails the test (instead of
    hanging it)."""
    outcome: list[BaseException | None] = []
    started = time.monotonic()

    def run() -> None:
        try:
            call()
        except Exception as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(give_up_s)
    assert outcome, f"still blocked after {give_up_s} s"
    return time.monotonic() - started, outcome[0]


def test_a_statement_on_a_pooled_connection_fails_within_the_timeout() -> None:
    with relayed_cache() as (cache, proxy):
        cache.put(SCOPE, {b"k" * 32: np.ones(4, np.float32)})
        assert cache.get(SCOPE, [b"k" * 32])  # a pooled connection that worked a moment ago
        proxy.blackhole()
        elapsed, error = timed(lambda: cache.get(SCOPE, [b"k" * 32]))
        assert isinstance(error, DeadlineExceeded), error
        assert elapsed < TIMEOUT_S + SLACK_S
        proxy.resume()
        assert cache.get(SCOPE, [b"k" * 32])  # the aborted connection was replaced: back at once


def test_connecting_is_bounded_by_the_timeout_not_by_libpqs_two_second_floor() -> None:
    with relayed_cache() as (cache, proxy):
        cache.engine.dispose()  # no pooled connection left: the next operation connects
        proxy.blackhole()
        elapsed, error = timed(lambda: cache.stats("acme"))
        assert isinstance(error, DeadlineExceeded), error
        assert elapsed < TIMEOUT_S + SLACK_S


def test_waiting_for_a_pooled_connection_is_bounded_too() -> None:
    with relayed_cache(pool_size=1) as (cache, proxy):  # at most 2 connections (pool + overflow)
        cache.stats("acme")
        proxy.blackhole()
        results: list[tuple[float, BaseException | None]] = []
        run_together(*[(lambda: results.append(timed(lambda: cache.stats("acme"))),)] * 4, timeout_s=30)
        assert len(results) == 4
        for elapsed, error in results:
            assert isinstance(error, DeadlineExceeded), error
            assert elapsed < TIMEOUT_S + SLACK_S


def test_a_long_sqlite_statement_is_interrupted_at_the_deadline(tmp_path: Path) -> None:
    cache = SqliteEmbeddingCache(tmp_path / "c.sqlite3", timeout_s=TIMEOUT_S)
    cache.prepare()
    endless = text("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n")

    def run() -> None:
        with cache.transaction() as connection:
            connection.execute(endless)

    elapsed, error = timed(run)
    assert isinstance(error, DeadlineExceeded), error
    assert elapsed < TIMEOUT_S + SLACK_S
    assert cache.get(SCOPE, [b"k" * 32]) == {}  # the connection is usable again
    cache.close()


def row_visits(cache: PostgresEmbeddingCache, statement: str, parameters: Any) -> int:
    """Rows the statement's plan reads from the entries table (EXPLAIN ANALYZE, rolled back): rows returned plus
    rows filtered out, times the loops of each scan node."""
    with cache.engine.connect() as connection:
        raw = connection.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
        plan = cursor.fetchone()[0][0]["Plan"]
        raw.rollback()

    def visits(node: dict[str, Any]) -> int:
        own = 0
        if node.get("Relation Name") == "embedding_cache_entries":
            rows = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
            own = rows * node.get("Actual Loops", 1)
        return own + sum(visits(child) for child in node.get("Plans", []))

    return visits(plan)


@pytest.mark.parametrize("statistics", ["none", "analyzed_empty"])
def test_hit_counting_reads_each_row_at_most_once_without_statistics(statistics: str) -> None:
    rows = 1250
    with postgres_database() as url:
        cache = PostgresEmbeddingCache(url)
        cache.prepare()  # analyzes the new, empty tables
        keys = [os.urandom(32) for _ in range(rows)]
        cache.put(SCOPE, {key: np.ones(4, np.float32) for key in keys})
        with cache.engine.begin() as connection:
            connection.execute(text("ALTER TABLE embedding_cache_entries SET (autovacuum_enabled = false)"))
            if statistics == "none":  # as on a server whose autovacuum never ran
                connection.execute(
                    text("UPDATE pg_class SET reltuples = -1, relpages = 0 WHERE relname LIKE 'embedding_cache%'")
                )
        executed: list[tuple[str, Any]] = []

        @event.listens_for(cache.engine, "before_cursor_execute")
        def _record(_c: Any, _cur: Any, statement: str, parameters: Any, _ctx: Any, _many: bool) -> None:
            executed.append((statement, parameters))

        found = cache.get(SCOPE, keys[:7])
        assert len(found) == 7
        event.remove(cache.engine, "before_cursor_execute", _record)
        counted = [(s, p) for s, p in executed if "embedding_cache_entries" in s and "SELECT 1" not in s]
        assert len(counted) >= 2  # the locking lookup and the hit-count update
        for statement, parameters in counted:
            assert row_visits(cache, statement, parameters) <= rows, statement
        assert cache.hit_count(SCOPE, keys[0]) == 1
        cache.close()


def test_sqlite_transactions_of_one_process_take_turns_instead_of_polling(tmp_path: Path) -> None:
    """16 threads writing hit counts at once: SQLite's busy handler sleeps between polls (up to 100 ms), so with a
    short bound some used to run out of time; taking turns on a lock, each waits only for the work ahead of it."""
    cache = SqliteEmbeddingCache(tmp_path / "c.sqlite3", timeout_s=0.5)
    cache.prepare()
    keys = [os.urandom(32) for _ in range(50)]
    cache.put(SCOPE, {key: np.ones(4, np.float32) for key in keys})
    failures: list[BaseException] = []

    def worker(n: int) -> None:
        for i in range(20):
            try:
                cache.get(SCOPE, keys[(n + i) % 50 :][:10])
                cache.put(SCOPE, {os.urandom(32): np.ones(4, np.float32)})
            except Exception as exc:
                failures.append(exc)

    run_together(*((worker, n) for n in range(16)))
    cache.close()
    assert failures == []


def test_the_entries_table_is_analyzed_again_as_it_grows() -> None:
    """With autovacuum off, the planner would keep the row count of the last ANALYZE (the empty table after the
    migration), and a 100-key lookup would filter the tenant's every row: the cache re-analyzes as it grows."""
    with postgres_database() as url:
        cache = PostgresEmbeddingCache(url)
        cache.prepare()
        with cache.engine.begin() as connection:
            connection.execute(text("ALTER TABLE embedding_cache_entries SET (autovacuum_enabled = false)"))
        keys = [os.urandom(32) for _ in range(20_000)]
        for start in range(0, len(keys), 500):
            cache.put(SCOPE, {key: np.ones(4, np.float32) for key in keys[start : start + 500]})

        def planned_rows() -> float:
            with cache.engine.connect() as connection:
                query = text("SELECT reltuples FROM pg_class WHERE relname = 'embedding_cache_entries'")
                return float(connection.execute(query).scalar() or 0)

        deadline = time.monotonic() + 10
        while planned_rows() < 15_000:
            assert time.monotonic() < deadline, "not analyzed"
            time.sleep(0.1)
        executed: list[tuple[str, Any]] = []

        @event.listens_for(cache.engine, "before_cursor_execute")
        def _record(_c: Any, _cur: Any, statement: str, parameters: Any, _ctx: Any, _many: bool) -> None:
            executed.append((statement, parameters))

        wanted = keys[5000:5100]
        assert len(cache.get(SCOPE, wanted)) == 100
        event.remove(cache.engine, "before_cursor_execute", _record)
        lookups = [(s, p) for s, p in executed if "embedding_cache_entries" in s and "SELECT 1" not in s]
        for statement, parameters in lookups:
            assert row_visits(cache, statement, parameters) <= 3 * len(wanted), statement  # not the 20,000 rows
        cache.close()


def test_tables_are_analyzed_right_after_a_migration() -> None:
    with postgres_database() as url:
        cache = PostgresEmbeddingCache(url)
        cache.prepare()
        with cache.engine.connect() as connection:
            query = "SELECT relname, last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = ANY(:names)"
            names = ["embedding_cache_entries", "embedding_cache_counters"]
            analyzed = connection.execute(text(query), {"names": names}).all()
        cache.close()
    assert dict(analyzed) == {"embedding_cache_entries": True, "embedding_cache_counters": True}
