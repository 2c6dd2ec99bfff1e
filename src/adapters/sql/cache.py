"""The embedding cache in the service's SQL database (SQLite or PostgreSQL): float32 vectors by tenant, model
revision, variant and text key, with hit counts and per-tenant hit/miss counters."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
from sqlalchemy import Connection, Engine, func, select, text, update

from adapters.sql.database import PostgresDatabase, SqlDatabase, SqliteDatabase
from adapters.sql.tables import counters, entries
from adapters.vector_bytes import from_bytes, to_bytes
from domain.model import CacheScope, CacheStats, Vector

MAINTENANCE_TIMEOUT_S = 60.0  # an ANALYZE in the background
ANALYZE_AFTER_ROWS, ANALYZE_AFTER_SHARE = 1000, 0.1

log = logging.getLogger(__name__)


class SqlEmbeddingCache:
    """The cache in one SQL database. Every method is one transaction under the database's client-side deadline: a
    lookup reads (locking the rows it will count, in key order, so concurrent lookups cannot deadlock), bumps the
    served entries' hit counts and adds to the tenant's counters; a store inserts all rows or none, leaving rows
    already there as they are. On PostgreSQL the entries table is re-analyzed as it grows. `owns_database`: closing
    the cache closes the database (a cache with a database of its own), else the database's owner closes it."""

    def __init__(self, database: SqlDatabase, *, owns_database: bool = True) -> None:
        self._db = database
        self._owns_database = owns_database
        self._grown = 0  # rows this process stored since the entries table was last analyzed
        self._analyzed_rows = 0.0  # the planner's row count after that
        self._analyzing = False
        self._growth_lock = threading.Lock()

    @property
    def backend(self) -> str:
        return self._db.backend

    @property
    def database(self) -> SqlDatabase:
        return self._db

    @property
    def engine(self) -> Engine:
        return self._db.engine

    def transaction(self) -> AbstractContextManager[Connection]:
        return self._db.transaction()

    def prepare(self) -> None:
        """Create or upgrade the database's schema (every table: one migration tree)."""
        self._db.prepare()

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
        with self._db.transaction() as connection:
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
        upsert = self._db.insert(counters).values(tenant=scope.tenant, hits=len(served), misses=misses)
        connection.execute(
            upsert.on_conflict_do_update(
                index_elements=[counters.c.tenant],
                set_={
                    "hits": counters.c.hits + upsert.excluded.hits,
                    "misses": counters.c.misses + upsert.excluded.misses,
                },
            )
        )

    def _put(self, scope: CacheScope, vectors: Mapping[bytes, Vector]) -> None:
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
        with self._db.transaction() as connection:
            connection.execute(self._db.insert(entries).on_conflict_do_nothing(), rows)

    def stats(self, tenant: str) -> CacheStats:
        with self._db.transaction() as connection:
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
        with self._db.transaction() as connection:
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
        if self._owns_database:
            self._db.close()

    def put(self, scope: CacheScope, vectors: Mapping[bytes, Vector]) -> None:
        self._put(scope, vectors)
        if self._db.dialect == "postgresql":
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
            with self._db.transaction() as connection:
                self._db.allow(connection, MAINTENANCE_TIMEOUT_S)  # another replica analyzing: give up, not wait
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


class SqliteEmbeddingCache(SqlEmbeddingCache):
    """CACHE_BACKEND=sqlite with a database file of its own."""

    def __init__(self, path: Path, timeout_s: float = 2.0) -> None:
        super().__init__(SqliteDatabase(path, timeout_s))


class PostgresEmbeddingCache(SqlEmbeddingCache):
    """CACHE_BACKEND=postgres with a database of its own (CACHE_URL)."""

    def __init__(self, url: str, timeout_s: float = 2.0, pool_size: int = 5) -> None:
        super().__init__(PostgresDatabase(url, timeout_s, pool_size))
