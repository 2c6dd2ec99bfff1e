"""Embedding caches in a relational database (SQLAlchemy 2 Core): SQLite (a file under DATA_DIR, hosted default) and
PostgreSQL. The schema is created and upgraded by the Alembic migrations in adapters/cache_migrations."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from alembic import command
from alembic.config import Config
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

from adapters.vector_bytes import from_bytes, to_bytes
from domain.model import CacheScope, CacheStats, Vector

MIGRATIONS = Path(__file__).with_name("cache_migrations")
VERSION_TABLE = "embedding_cache_alembic_version"
MIGRATION_LOCK = 0x656D6263  # pg_advisory_xact_lock key: one process migrates at a time

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
    """The cache in one SQL database. Every method is one transaction: a lookup reads, bumps the served entries'
    hit counts (rows locked in key order, so concurrent lookups cannot deadlock) and adds to the tenant's counters;
    a store inserts all rows or none, leaving rows already there as they are."""

    backend = "sql"

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def engine(self) -> Engine:
        return self._engine

    def prepare(self) -> None:
        with self._engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            command.upgrade(alembic_config(connection), "head")

    def get(
        self, scope: CacheScope, keys: Sequence[bytes], *, shared_pool: bool = False, count: bool = True
    ) -> dict[bytes, Vector]:
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        own_first = scope.readable_tenants(shared_pool)
        with self._engine.begin() as connection:
            rows = connection.execute(
                select(entries.c.tenant, entries.c.text_key, entries.c.vector).where(
                    entries.c.tenant.in_(own_first),
                    entries.c.model == scope.model,
                    entries.c.variant == scope.variant,
                    entries.c.text_key.in_(wanted),
                )
            ).all()
            served: dict[bytes, tuple[str, bytes]] = {}
            for tenant, key, blob in sorted(rows, key=lambda row: own_first.index(row[0]), reverse=True):
                served[bytes(key)] = (tenant, bytes(blob))  # the tenant's own entry overwrites the shared one
            if count:
                self._count(connection, scope, served, misses=len(wanted) - len(served))
        return {key: from_bytes(blob) for key, (_, blob) in served.items()}

    def _count(
        self, connection: Connection, scope: CacheScope, served: Mapping[bytes, tuple[str, bytes]], misses: int
    ) -> None:
        for tenant in sorted({tenant for tenant, _ in served.values()}):
            hit_keys = sorted(key for key, (owner, _) in served.items() if owner == tenant)
            same_rows = (
                entries.c.tenant == tenant,
                entries.c.model == scope.model,
                entries.c.variant == scope.variant,
            )
            locked = (
                select(entries.c.text_key)
                .where(*same_rows, entries.c.text_key.in_(hit_keys))
                .order_by(entries.c.text_key)
                .with_for_update()
            )
            connection.execute(
                update(entries)
                .where(*same_rows, entries.c.text_key.in_(locked.scalar_subquery()))
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
        with self._engine.begin() as connection:
            connection.execute(self._insert(entries).on_conflict_do_nothing(), rows)

    def stats(self, tenant: str) -> CacheStats:
        with self._engine.begin() as connection:
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
        with self._engine.connect() as connection:
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
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        super().__init__(engine)

    @property
    def path(self) -> Path:
        return self._path

    def prepare(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        super().prepare()


class PostgresEmbeddingCache(SqlAlchemyEmbeddingCache):
    """CACHE_BACKEND=postgres: CACHE_URL names the database (postgresql://user:password@host:port/db, driven by
    psycopg 3). Connecting, waiting for the pool and every statement are bounded by `timeout_s`."""

    backend = "postgres"

    def __init__(self, url: str, timeout_s: float = 2.0, pool_size: int = 5) -> None:
        milliseconds = max(1, int(timeout_s * 1000))
        engine = create_engine(
            psycopg_url(url),
            pool_pre_ping=True,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_timeout=timeout_s,
            connect_args={
                "connect_timeout": max(1, math.ceil(timeout_s)),
                "options": f"-c statement_timeout={milliseconds} -c lock_timeout={milliseconds}",
            },
        )
        super().__init__(engine)


def psycopg_url(url: str) -> str:
    """postgres:// and postgresql:// URLs use the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
