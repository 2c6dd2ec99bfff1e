"""Embedding caches in a relational database (SQLAlchemy 2 Core): SQLite (a file under DATA_DIR, hosted default) and
PostgreSQL. The schema is created and upgraded by the Alembic migrations in adapters/cache_migrations. Every
operation is bounded on the client side (adapters/sql_deadlines.py): a database that stops answering fails it soon."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Engine,
    Insert,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DisconnectionError

from adapters.sql_deadlines import (
    BoundedConnector,
    ConnectionWatchdog,
    DeadlineExceeded,
    interrupt_sqlite,
    shutdown_socket,
)
from adapters.vector_bytes import from_bytes, to_bytes
from domain.model import CacheScope, CacheStats, Vector

MIGRATIONS = Path(__file__).with_name("cache_migrations")
VERSION_TABLE = "embedding_cache_alembic_version"
MIGRATION_LOCK = 0x656D6263  # pg_advisory_xact_lock key: one process migrates at a time
MIGRATION_TIMEOUT_S = 600.0  # a schema upgrade may take longer than a lookup; checking the revision may not
MAINTENANCE_TIMEOUT_S = 60.0  # an ANALYZE in the background
ANALYZE_AFTER_ROWS, ANALYZE_AFTER_SHARE = 1000, 0.1
FRESH = "embedding_cache_fresh"  # in a pool record's info: connected just now, no ping needed

log = logging.getLogger(__name__)

metadata = MetaData()

entries = Table(
    "embedding_cache_entries",
    metadata,
    Column("tenant", String(64), primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("variant", String(100), primary_key=True),
    Column("text_key", LargeBinary(32), primary_key=True),
    Column("dimensions", Integer, nullable=False),
    Column("vector", LargeBinary, nullable=False),
    Column("hits", BigInteger, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_hit_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("length(vector) = 4 * dimensions", name="ck_embedding_cache_entries_float32"),
)

counters = Table(
    "embedding_cache_counters",
    metadata,
    Column("tenant", String(64), primary_key=True),
    Column("hits", BigInteger, nullable=False, server_default="0"),
    Column("misses", BigInteger, nullable=False, server_default="0"),
)


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


class SqlAlchemyEmbeddingCache:
    """The cache in one SQL database. Every method is one transaction under a client-side deadline: a lookup reads
    (locking the rows it will count, in key order, so concurrent lookups cannot deadlock), bumps the served entries'
    hit counts and adds to the tenant's counters; a store inserts all rows or none, leaving rows already there as they
    are. Pooled connections are pinged when handed out (a database that restarted costs no failed lookup)."""

    backend = "sql"

    def __init__(
        self,
        engine: Engine,
        timeout_s: float,
        abort: Callable[[Any], None],
        *,
        network: bool = False,
    ) -> None:
        self._engine = engine
        self._watchdog = ConnectionWatchdog(timeout_s, abort)
        watchdog = self._watchdog
        self._connector: BoundedConnector | None = None
        if network:  # a server over the network: connecting is bounded too, and pooled connections are pinged
            connector = self._connector = BoundedConnector(watchdog, threads=4)

            @event.listens_for(engine, "do_connect")
            def _connect(dialect: Any, _: Any, args: list[Any], parameters: dict[str, Any]) -> Any:
                return connector.connect(lambda: dialect.connect(*args, **parameters))

        @event.listens_for(engine, "connect")
        def _on_connect(_: Any, record: Any) -> None:
            record.info[FRESH] = True

        @event.listens_for(engine, "checkout")
        def _on_checkout(dbapi_connection: Any, record: Any, _: Any) -> None:
            if not watchdog.attach(dbapi_connection):  # from here on the deadline can abort it, the ping included
                return  # out of time already: transaction() raises, the healthy connection goes back unharmed
            if not network or record.info.pop(FRESH, False):
                return
            try:
                engine.dialect.do_ping(dbapi_connection)
            except Exception as exc:
                watchdog.detach(dbapi_connection)
                if watchdog.expired():
                    raise
                raise DisconnectionError("a pooled connection failed its ping") from exc  # the pool reconnects

        @event.listens_for(engine, "checkin")
        @event.listens_for(engine, "invalidate")
        @event.listens_for(engine, "close")
        def _let_go(dbapi_connection: Any, *_: Any) -> None:
            watchdog.detach(dbapi_connection)  # back in the pool, or about to be closed: never aborted after this

    @property
    def engine(self) -> Engine:
        return self._engine

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction, from waiting for a connection to giving it back, within the client-side deadline."""
        with self._watchdog.operation(), self._exclusive(), self._engine.begin() as connection:
            self._watchdog.check()
            yield connection

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Whatever a transaction must hold besides its connection (nothing here)."""
        yield

    def prepare(self) -> None:
        """Bring the schema to the latest revision. Checking the revision is bounded like any statement; an upgrade
        gets MIGRATION_TIMEOUT_S, and the upgraded tables are analyzed so the planner has statistics at once."""
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        with self.transaction() as connection:
            postgres = connection.dialect.name == "postgresql"
            if postgres:
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
            current = context.get_current_revision()
            if current == head:
                return
            self._allow(connection, MIGRATION_TIMEOUT_S, lock_waits=True)
            started = time.monotonic()
            command.upgrade(alembic_config(connection), "head")
            for table in metadata.sorted_tables:
                connection.execute(text(f"ANALYZE {table.name}"))
            log.info("cache schema upgraded from %s to %s in %.1f s", current, head, time.monotonic() - started)

    def _allow(self, connection: Connection, seconds: float, *, lock_waits: bool = False) -> None:
        """Give the current transaction `seconds` from now, on the client and (PostgreSQL) for its statements and,
        with `lock_waits`, its lock waits on the server: maintenance that may take longer than a lookup."""
        self._watchdog.extend(seconds)
        if connection.dialect.name == "postgresql":
            limit = f"'{int(seconds * 1000)}ms'"
            connection.execute(text(f"SET LOCAL statement_timeout = {limit}"))
            if lock_waits:
                connection.execute(text(f"SET LOCAL lock_timeout = {limit}"))

    def get(
        self, scope: CacheScope, keys: Sequence[bytes], *, shared_pool: bool = False, count: bool = True
    ) -> dict[bytes, Vector]:
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        own_first = scope.readable_tenants(shared_pool)
        lookup = select(entries.c.tenant, entries.c.text_key, entries.c.vector).where(
            entries.c.tenant.in_(own_first),
            entries.c.model == scope.model,
            entries.c.variant == scope.variant,
            entries.c.text_key.in_(wanted),
        )
        if count:  # the rows whose hit counts this transaction bumps, locked in one global order: no deadlocks
            lookup = lookup.order_by(entries.c.tenant, entries.c.text_key).with_for_update()
        with self.transaction() as connection:
            rows = connection.execute(lookup).all()
            served: dict[bytes, tuple[str, bytes]] = {}
            for tenant, key, blob in sorted(rows, key=lambda row: own_first.index(row[0]), reverse=True):
                served[bytes(key)] = (tenant, bytes(blob))  # the tenant's own entry overwrites the shared one
            if count:
                self._count(connection, scope, served, misses=len(wanted) - len(served))
        return {key: from_bytes(blob) for key, (_, blob) in served.items()}

    def _count(
        self, connection: Connection, scope: CacheScope, served: Mapping[bytes, tuple[str, bytes]], misses: int
    ) -> None:
        """Plain statements over the key list (no subquery the planner could re-run per row): the rows are already
        locked by the lookup, so whatever plan the planner picks without statistics visits each row once."""
        for tenant in sorted({tenant for tenant, _ in served.values()}):
            hit_keys = sorted(key for key, (owner, _) in served.items() if owner == tenant)
            connection.execute(
                update(entries)
                .where(
                    entries.c.tenant == tenant,
                    entries.c.model == scope.model,
                    entries.c.variant == scope.variant,
                    entries.c.text_key.in_(hit_keys),
                )
                .values(hits=entries.c.hits + 1, last_hit_at=func.now())
            )
        upsert = self._insert(counters).values(tenant=scope.tenant, hits=len(served), misses=misses)
        connection.execute(
            upsert.on_conflict_do_update(
                index_elements=[counters.c.tenant],
                set_={
                    "hits": counters.c.hits + upsert.excluded.hits,
                    "misses": counters.c.misses + upsert.excluded.misses,
                },
            )
        )

    def put(self, scope: CacheScope, vectors: Mapping[bytes, Vector]) -> None:
        rows = [
            {
                "tenant": scope.tenant,
                "model": scope.model,
                "variant": scope.variant,
                "text_key": key,
                "dimensions": int(np.asarray(vector).shape[0]),
                "vector": to_bytes(vector),
            }
            for key, vector in sorted(vectors.items(), key=lambda item: item[0])  # key order: no insert deadlocks
        ]
        if not rows:
            return
        with self.transaction() as connection:
            connection.execute(self._insert(entries).on_conflict_do_nothing(), rows)

    def stats(self, tenant: str) -> CacheStats:
        with self.transaction() as connection:
            counted = connection.execute(
                select(counters.c.hits, counters.c.misses).where(counters.c.tenant == tenant)
            ).first()
            owned = connection.execute(
                select(func.count()).select_from(entries).where(entries.c.tenant == tenant)
            ).scalar_one()
        hits, misses = counted if counted is not None else (0, 0)
        return CacheStats(hits=int(hits), misses=int(misses), entries=int(owned))

    def hit_count(self, scope: CacheScope, key: bytes) -> int:
        """How often one entry was served."""
        with self.transaction() as connection:
            hits = connection.execute(
                select(entries.c.hits).where(
                    entries.c.tenant == scope.tenant,
                    entries.c.model == scope.model,
                    entries.c.variant == scope.variant,
                    entries.c.text_key == key,
                )
            ).scalar()
        return int(hits or 0)

    def close(self) -> None:
        self._watchdog.close()
        if self._connector is not None:
            self._connector.close()
        self._engine.dispose()

    def _insert(self, table: Table) -> Any:
        dialect: Any = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        statement: Insert = dialect.insert(table)
        return statement


class SqliteEmbeddingCache(SqlAlchemyEmbeddingCache):
    """CACHE_BACKEND=sqlite: one file (WAL journal, so readers never wait for the writer). Transactions start with
    BEGIN IMMEDIATE: a lookup that also writes hit counts waits for the write lock (up to `timeout_s`) instead of
    failing when another process wrote in between."""

    backend = "sqlite"

    def __init__(self, path: Path, timeout_s: float = 2.0) -> None:
        self._path = Path(path)
        engine = create_engine(f"sqlite:///{self._path}", connect_args={"timeout": timeout_s})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _: Any) -> None:
            dbapi_connection.isolation_level = None  # the driver's own BEGIN off: ours below
            use_wal(dbapi_connection, timeout_s)
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        super().__init__(engine, timeout_s, interrupt_sqlite)
        self._turn = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Transactions of this process take turns on an in-process lock (within the deadline) before SQLite's
        write lock: SQLite's own busy handler polls with growing sleeps, which under many concurrent requests
        cost more than the work and ran lookups into the deadline."""
        left = self._watchdog.remaining()
        if not self._turn.acquire(timeout=-1 if left is None else left):
            raise DeadlineExceeded(f"the cache file stayed busy for {self._watchdog.timeout_s:g} s")
        try:
            yield
        finally:
            self._turn.release()

    def prepare(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        super().prepare()


class PostgresEmbeddingCache(SqlAlchemyEmbeddingCache):
    """CACHE_BACKEND=postgres: CACHE_URL names the database (postgresql://user:password@host:port/db, driven by
    psycopg 3). Connecting, waiting for the pool and every statement (and the network reads under it) are bounded by
    `timeout_s` on the client, statements and lock waits also on the server."""

    backend = "postgres"

    def __init__(self, url: str, timeout_s: float = 2.0, pool_size: int = 5) -> None:
        milliseconds = max(1, int(timeout_s * 1000))
        engine = create_engine(
            psycopg_url(url),
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_timeout=timeout_s,
            connect_args={
                "connect_timeout": max(1, math.ceil(timeout_s)),
                "options": f"-c statement_timeout={milliseconds} -c lock_timeout={milliseconds}",
            },
        )
        super().__init__(engine, timeout_s, shutdown_socket, network=True)
        self._grown = 0  # rows this process stored since the entries table was last analyzed
        self._analyzed_rows = 0.0  # the planner's row count after that
        self._analyzing = False
        self._growth_lock = threading.Lock()

    def put(self, scope: CacheScope, vectors: Mapping[bytes, Vector]) -> None:
        super().put(scope, vectors)
        self._grew(len(vectors))

    def _grew(self, rows: int) -> None:
        """Re-analyze the entries table as it grows, as autovacuum would (it may be off: the planner then keeps the
        row count of the last ANALYZE, an empty table after the migration, and a lookup's index scan filters the
        tenant's every row instead of seeking the keys): after 1000 new rows or 10% more, in a background thread."""
        with self._growth_lock:
            self._grown += rows
            if self._analyzing or self._grown < max(ANALYZE_AFTER_ROWS, ANALYZE_AFTER_SHARE * self._analyzed_rows):
                return
            self._analyzing, self._grown = True, 0
        threading.Thread(target=self._analyze, name="cache-analyze", daemon=True).start()

    def _analyze(self) -> None:
        try:
            with self.transaction() as connection:
                self._allow(connection, MAINTENANCE_TIMEOUT_S)  # another replica analyzing: give up, not wait
                connection.execute(text(f"ANALYZE {entries.name}"))
                rows = connection.execute(
                    text("SELECT reltuples FROM pg_class WHERE oid = CAST(:table AS regclass)"), {"table": entries.name}
                ).scalar()
            with self._growth_lock:
                self._analyzed_rows = float(rows or 0)
            log.debug("analyzed %s: %.0f rows", entries.name, float(rows or 0))
        except Exception as exc:
            log.info("analyzing %s failed (%s); trying again after more rows", entries.name, type(exc).__name__)
        finally:
            with self._growth_lock:
                self._analyzing = False


def use_wal(dbapi_connection: Any, timeout_s: float) -> None:
    """Switch a SQLite file to WAL (it stays so). Switching needs the file to itself, and SQLite answers "database is
    locked" at once instead of waiting its busy timeout while another process is switching or migrating: retry."""
    import sqlite3

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                dbapi_connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def psycopg_url(url: str) -> str:
    """postgres:// and postgresql:// URLs use the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
