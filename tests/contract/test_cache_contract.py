"""One contract, every cache adapter (in-memory, SQLite file, real PostgreSQL): what the domain relies on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from adapters.memory_cache import InMemoryEmbeddingCache, NoEmbeddingCache
from adapters.sql.cache import PostgresEmbeddingCache, SqlEmbeddingCache, SqliteEmbeddingCache
from domain.model import SHARED_POOL, CacheScope, CacheStats
from tests.support import postgres_database, run_together

Cache = InMemoryEmbeddingCache | SqliteEmbeddingCache | PostgresEmbeddingCache
MODEL = "sentence-transformers/all-MiniLM-L6-v2@1110a243fdf4706b3f48f1d95db1a4f5529b4d41"
ACME = CacheScope("acme", MODEL, "onnx-fp32/float32-l2")
GLOBEX = CacheScope("globex", MODEL, "onnx-fp32/float32-l2")
SHARED = CacheScope(SHARED_POOL, MODEL, "onnx-fp32/float32-l2")


def vec(seed: int, dimension: int = 384) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dimension).astype(np.float32)
    return v / np.linalg.norm(v)


def key(n: int) -> bytes:
    return n.to_bytes(32, "big")


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cache]:
    built: Cache
    if request.param == "memory":
        built = InMemoryEmbeddingCache(max_entries=1000)
        built.prepare()
        yield built
    elif request.param == "sqlite":
        built = SqliteEmbeddingCache(tmp_path / "data" / "cache.sqlite3")
        built.prepare()
        yield built
        built.close()
    else:
        with postgres_database() as url:
            built = PostgresEmbeddingCache(url)
            built.prepare()
            yield built
            built.close()


def test_stores_float32_bytes_exactly(cache: Cache) -> None:
    vectors = {key(i): vec(i) for i in range(5)}
    cache.put(ACME, vectors)
    found = cache.get(ACME, [key(i) for i in range(5)])
    assert set(found) == set(vectors)
    for k, v in vectors.items():
        assert found[k].dtype == np.float32
        assert found[k].tobytes() == v.tobytes()


def test_missing_keys_are_absent_and_counted(cache: Cache) -> None:
    cache.put(ACME, {key(1): vec(1)})
    assert set(cache.get(ACME, [key(1), key(2), key(3)])) == {key(1)}
    assert set(cache.get(ACME, [])) == set()
    assert cache.stats("acme") == CacheStats(hits=1, misses=2, entries=1)
    assert cache.hit_count(ACME, key(1)) == 1


def test_uncounted_lookups_change_no_counter(cache: Cache) -> None:
    cache.put(ACME, {key(1): vec(1)})
    assert set(cache.get(ACME, [key(1), key(2)], count=False)) == {key(1)}
    assert cache.stats("acme") == CacheStats(hits=0, misses=0, entries=1)
    assert cache.hit_count(ACME, key(1)) == 0


def test_first_stored_vector_wins(cache: Cache) -> None:
    cache.put(ACME, {key(1): vec(1)})
    cache.put(ACME, {key(1): vec(2), key(2): vec(3)})
    found = cache.get(ACME, [key(1), key(2)])
    np.testing.assert_array_equal(found[key(1)], vec(1))
    np.testing.assert_array_equal(found[key(2)], vec(3))
    assert cache.stats("acme").entries == 2


def test_tenants_models_and_variants_are_apart(cache: Cache) -> None:
    cache.put(ACME, {key(1): vec(1)})
    other_model = CacheScope("acme", MODEL.replace("1110a2", "000000"), ACME.variant)
    other_variant = CacheScope("acme", MODEL, "torch-fp32/float32-l2")
    for scope in (GLOBEX, other_model, other_variant):
        assert cache.get(scope, [key(1)]) == {}
    assert cache.get(GLOBEX, [key(1)], shared_pool=True) == {}
    assert cache.stats("globex") == CacheStats(hits=0, misses=2, entries=0)


def test_shared_pool_is_read_only_when_asked_and_own_entries_come_first(cache: Cache) -> None:
    cache.put(SHARED, {key(1): vec(1), key(2): vec(2)})
    cache.put(ACME, {key(2): vec(20)})
    assert set(cache.get(ACME, [key(1), key(2)])) == {key(2)}
    found = cache.get(ACME, [key(1), key(2)], shared_pool=True)
    np.testing.assert_array_equal(found[key(1)], vec(1))
    np.testing.assert_array_equal(found[key(2)], vec(20))
    assert cache.hit_count(SHARED, key(1)) == 1
    assert cache.hit_count(SHARED, key(2)) == 0
    assert cache.hit_count(ACME, key(2)) == 2
    assert cache.stats("acme") == CacheStats(hits=3, misses=1, entries=1)
    assert cache.stats(SHARED_POOL).entries == 2


def test_a_store_with_a_bad_vector_stores_nothing(cache: Cache) -> None:
    with pytest.raises(ValueError, match="finite"):
        cache.put(ACME, {key(1): vec(1), key(2): np.array([np.nan, 1.0], dtype=np.float32)})
    assert cache.get(ACME, [key(1), key(2)]) == {}
    assert cache.stats("acme").entries == 0


def test_prepare_is_idempotent(cache: Cache) -> None:
    cache.put(ACME, {key(1): vec(1)})
    cache.prepare()
    assert set(cache.get(ACME, [key(1)])) == {key(1)}


def test_concurrent_lookups_and_stores_of_the_same_keys(cache: Cache) -> None:
    keys = [key(i) for i in range(20)]
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for round_ in range(5):
                rotated = keys[n * 5 :] + keys[: n * 5]
                order = rotated if round_ % 2 else rotated[::-1]
                cache.put(ACME, {k: vec(int.from_bytes(k, "big")) for k in order[:10]})
                cache.get(ACME, order)
        except BaseException as exc:
            errors.append(exc)

    run_together(*((worker, n) for n in range(4)))
    assert errors == []
    stats = cache.stats("acme")
    assert stats.hits + stats.misses == 4 * 5 * 20
    for k, v in cache.get(ACME, keys, count=False).items():
        np.testing.assert_array_equal(v, vec(int.from_bytes(k, "big")))


def test_no_cache_stores_nothing() -> None:
    none = NoEmbeddingCache()
    none.prepare()
    none.put(ACME, {key(1): vec(1)})
    assert none.get(ACME, [key(1)], shared_pool=True) == {}
    assert none.stats("acme") == CacheStats(0, 0, 0)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_store_failing_in_the_database_is_rolled_back_whole(backend: str, tmp_path: Path) -> None:
    """A trigger rejects the third row of a store: the two rows before it must not stay behind."""
    with postgres_database() as url:
        cache: SqlEmbeddingCache = (
            SqliteEmbeddingCache(tmp_path / "cache.sqlite3") if backend == "sqlite" else PostgresEmbeddingCache(url)
        )
        cache.prepare()
        with cache.engine.begin() as connection:
            if backend == "sqlite":
                connection.exec_driver_sql(
                    "CREATE TRIGGER reject BEFORE INSERT ON embedding_cache_entries "
                    f"WHEN NEW.text_key = x'{key(3).hex()}' BEGIN SELECT RAISE(ABORT, 'rejected'); END"
                )
            else:
                connection.exec_driver_sql(
                    "CREATE FUNCTION reject() RETURNS trigger AS $$ BEGIN "
                    f"IF NEW.text_key = '\\x{key(3).hex()}'::bytea THEN RAISE EXCEPTION 'rejected'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
                connection.exec_driver_sql(
                    "CREATE TRIGGER reject BEFORE INSERT ON embedding_cache_entries "
                    "FOR EACH ROW EXECUTE FUNCTION reject()"
                )
        with pytest.raises(Exception, match="rejected"):
            cache.put(ACME, {key(1): vec(1), key(2): vec(2), key(3): vec(3)})
        assert cache.get(ACME, [key(1), key(2), key(3)], count=False) == {}
        assert cache.stats("acme").entries == 0
        cache.close()
