"""The service's one SQL database (SQLAlchemy 2 Core): SQLite (a file in DATA_DIR, the embedded default) or
PostgreSQL (DATABASE_URL, or CACHE_URL for a cache of its own). It owns the engine, the schema (Alembic migrations
in adapters/sql/migrations, one tree for every table) and the transactions every store runs in. Every transaction
is bounded on the client side (adapters/sql_deadlines.py): a database that stops answering fails it soon."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, Insert, Table, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DisconnectionError

from adapters.sql.tables import metadata
from adapters.sql_deadlines import (
    BoundedConnector,
    ConnectionWatchdog,
    DeadlineExceeded,
    interrupt_sqlite,
    shutdown_socket,
)

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "embedding_cache_alembic_version"  # the name from when the cache was the only schema: kept
MIGRATION_LOCK = 0x656D6263  # pg_advisory_xact_lock key: one process migrates at a time
MIGRATION_TIMEOUT_S = 600.0  # a schema upgrade may take longer than a lookup; checking the revision may not
FRESH = "embedding_cache_fresh"  # in a pool record's info: connected just now, no ping needed

log = logging.getLogger(__name__)
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # one line per plugin at every start-up


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


class SqlDatabase:
    """One database and its schema. `transaction()` is the unit of work: every store's operation, and every
    multi-row change (an account with its first key), is one transaction under a client-side deadline. Pooled
    connections of a network database are pinged when handed out (a database that restarted costs no failed call)."""

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
        self._prepare_lock = threading.Lock()
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

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction, from waiting for a connection to giving it back, within the client-side deadline."""
        with self._watchdog.operation(), self._exclusive(), self._engine.begin() as connection:
            self._watchdog.check()
            yield connection

    unit_of_work = transaction

    def read(self) -> AbstractContextManager[Connection]:
        """For one read-only statement: a transaction here; PostgreSQL overrides it with an autocommit connection
        (one round trip instead of BEGIN, the statement and COMMIT)."""
        return self.transaction()

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Whatever a transaction must hold besides its connection (nothing here)."""
        yield

    def prepare(self) -> None:
        """Bring the schema to the latest revision (idempotent; one process migrates at a time). Checking the
        revision is bounded like any statement; an upgrade gets MIGRATION_TIMEOUT_S, and the upgraded tables are
        analyzed so the planner has statistics at once."""
        with self._prepare_lock:
            head = ScriptDirectory.from_config(alembic_config()).get_current_head()
            with self.transaction() as connection:
                if self.dialect == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
                context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
                current = context.get_current_revision()
                if current == head:
                    return
                self.allow(connection, MIGRATION_TIMEOUT_S, lock_waits=True)
                started = time.monotonic()
                command.upgrade(alembic_config(connection), "head")
                for table in metadata.sorted_tables:
                    connection.execute(text(f"ANALYZE {table.name}"))
                log.info("database schema upgraded from %s to %s in %.1f s", current, head, time.monotonic() - started)

    def allow(self, connection: Connection, seconds: float, *, lock_waits: bool = False) -> None:
        """Give the current transaction `seconds` from now, on the client and (PostgreSQL) for its statements and,
        with `lock_waits`, its lock waits on the server: maintenance that may take longer than a lookup."""
        self._watchdog.extend(seconds)
        if self.dialect == "postgresql":
            limit = f"'{int(seconds * 1000)}ms'"
            connection.execute(text(f"SET LOCAL statement_timeout = {limit}"))
            if lock_waits:
                connection.execute(text(f"SET LOCAL lock_timeout = {limit}"))

    def insert(self, table: Table) -> Any:
        """An INSERT with the dialect's ON CONFLICT clauses."""
        dialect: Any = postgresql if self.dialect == "postgresql" else sqlite
        statement: Insert = dialect.insert(table)
        return statement

    def close(self) -> None:
        self._watchdog.close()
        if self._connector is not None:
            self._connector.close()
        self._engine.dispose()


class SqliteDatabase(SqlDatabase):
    """One file (WAL journal, so readers never wait for the writer). Transactions start with BEGIN IMMEDIATE: a
    lookup that also writes hit counts waits for the write lock (up to `timeout_s`) instead of failing when another
    process wrote in between."""

    backend = "sqlite"

    def __init__(self, path: Path, timeout_s: float = 2.0) -> None:
        self._path = Path(path)
        engine = create_engine(f"sqlite:///{self._path}", connect_args={"timeout": timeout_s})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _: Any) -> None:
            dbapi_connection.isolation_level = None  # the driver's own BEGIN off: ours below
            use_wal(dbapi_connection, timeout_s)
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")
            dbapi_connection.execute("PRAGMA foreign_keys=ON")

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
            raise DeadlineExceeded(f"the database file stayed busy for {self._watchdog.timeout_s:g} s")
        try:
            yield
        finally:
            self._turn.release()

    def prepare(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        super().prepare()


class PostgresDatabase(SqlDatabase):
    """postgresql://user:password@host:port/db, driven by psycopg 3. Connecting, waiting for the pool and every
    statement (and the network reads under it) are bounded by `timeout_s` on the client, statements and lock waits
    also on the server."""

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

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self._watchdog.operation(), self._engine.connect() as connection:
            self._watchdog.check()
            yield connection.execution_options(isolation_level="AUTOCOMMIT")


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
