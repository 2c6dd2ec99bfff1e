"""The Alembic migrations of the cache schema: they build exactly the tables the adapter queries, on SQLite and on
the real PostgreSQL, go down and up again, and several processes may run them at once."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from adapters.sql.cache import PostgresEmbeddingCache, SqlEmbeddingCache, SqliteEmbeddingCache
from adapters.sql.database import VERSION_TABLE, alembic_config
from adapters.sql.tables import metadata
from domain.model import CacheScope
from tests.support import postgres_database


def differences(cache: SqlEmbeddingCache) -> list[object]:
    with cache.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE, "compare_type": True})
        return list(compare_metadata(context, metadata))


def tables(cache: SqlEmbeddingCache) -> set[str]:
    return set(inspect(cache.engine).get_table_names())


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_migrations_match_the_tables_the_adapter_uses(backend: str, tmp_path: Path) -> None:
    with postgres_database() as url:
        cache = SqliteEmbeddingCache(tmp_path / "c.sqlite3") if backend == "sqlite" else PostgresEmbeddingCache(url)
        cache.prepare()
        assert tables(cache) == {
            "embedding_cache_entries",
            "embedding_cache_counters",
            "embedding_accounts",
            "embedding_api_keys",
            "embedding_usage_daily",
            "embedding_providers",
            VERSION_TABLE,
        }
        assert differences(cache) == []
        with cache.engine.begin() as connection:
            command.downgrade(alembic_config(connection), "base")
        assert tables(cache) == {VERSION_TABLE}
        cache.prepare()
        assert differences(cache) == []
        cache.close()


def _prepare(url: str) -> None:
    PostgresEmbeddingCache(url).prepare()


def _prepare_sqlite(path: str) -> None:
    SqliteEmbeddingCache(Path(path), timeout_s=10).prepare()


def test_processes_starting_together_migrate_once() -> None:
    spawn = multiprocessing.get_context("spawn")
    with postgres_database() as url:
        with spawn.Pool(4) as pool:
            pool.map(_prepare, [url] * 4)
        cache = PostgresEmbeddingCache(url)
        assert differences(cache) == []
        cache.close()


def test_processes_starting_together_migrate_one_sqlite_file_once(tmp_path: Path) -> None:
    spawn = multiprocessing.get_context("spawn")
    path = tmp_path / "data" / "c.sqlite3"
    with spawn.Pool(4) as pool:
        pool.map(_prepare_sqlite, [str(path)] * 4)
    cache = SqliteEmbeddingCache(path)
    assert differences(cache) == []
    cache.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_cache_database_of_the_first_revision_upgrades_keeping_its_entries(backend: str, tmp_path: Path) -> None:
    """A cache made before the hosted tables existed (revision 0001) gains them at start-up; its entries stay."""
    with postgres_database() as url:
        cache = SqliteEmbeddingCache(tmp_path / "c.sqlite3") if backend == "sqlite" else PostgresEmbeddingCache(url)
        with cache.engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0001")
        scope = CacheScope("acme", "m@1", "v")
        cache.put(scope, {b"k" * 32: np.ones(4, dtype=np.float32) / 2})
        assert tables(cache) == {"embedding_cache_entries", "embedding_cache_counters", VERSION_TABLE}
        cache.prepare()
        assert {"embedding_accounts", "embedding_api_keys", "embedding_usage_daily"} <= tables(cache)
        assert differences(cache) == []
        assert list(cache.get(scope, [b"k" * 32], count=False)) == [b"k" * 32]
        cache.close()


def test_tables_of_the_users_own_with_common_names_do_not_clash() -> None:
    """A CACHE_URL database may hold an application's own accounts or api_keys tables: the service's are prefixed."""
    with postgres_database() as url:
        cache = PostgresEmbeddingCache(url)
        with cache.engine.begin() as connection:
            for table in ("accounts", "api_keys", "usage_daily"):
                connection.exec_driver_sql(f"CREATE TABLE {table} (id integer PRIMARY KEY)")
        cache.prepare()
        foreign = {("remove_table", name) for name in ("accounts", "api_keys", "usage_daily")}
        assert {(d[0], d[1].name) for d in differences(cache)} == foreign  # type: ignore[index,union-attr]
        assert {"embedding_accounts", "embedding_api_keys", "embedding_usage_daily"} <= tables(cache)
        cache.close()
