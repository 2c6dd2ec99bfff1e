"""Pre-seeding the cache from a text file (`embedding-service cache seed`), on the fake embedder and SQLite."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from adapters.fake_embedder import FakeEmbedder, FakeEmbedderLoader
from adapters.sql.cache import SqliteEmbeddingCache
from domain.model import KNOWN_MODELS, SHARED_POOL, CacheScope, CacheStats, Limits, Vectors
from domain.services import text_key
from domain.use_cases import SeedCache
from entrypoints.cli import main
from entrypoints.http.app import create_app
from tests.support import fake_settings, wait_ready

SPEC = KNOWN_MODELS["all-mpnet-base-v2"]
KEY = "acme-key-0123456789"


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no .env from the checkout
    for name, value in {
        "EMBEDDER_BACKEND": "fake",
        "CACHE_BACKEND": "sqlite",
        "DATA_DIR": str(tmp_path / "data"),
        "MAX_INPUT_LENGTH": "40",
    }.items():
        monkeypatch.setenv(name, value)
    return tmp_path


def served_cached_flags(tmp_path: Path, texts: list[str], shared_pool: bool = False) -> list[bool]:
    settings = fake_settings(
        cache_backend="sqlite",
        data_dir=tmp_path / "data",
        tenant_api_keys={"acme": KEY},
        cache_shared_pool=shared_pool,
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        response = client.post("/v1/embed/batch", json={"texts": texts}, headers={"Authorization": f"Bearer {KEY}"})
        flags: list[bool] = response.json()["cached"]
        return flags


def test_seed_fills_a_tenant_once_and_the_server_finds_it(env: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = ["Ada Lovelace", "", "Grace Hopper", "Ada Lovelace", "   ", "x" * 41, "Alan Turing\r"]
    (env / "names.txt").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.INFO, logger="entrypoints.cli"):
        assert main(["cache", "seed", "names.txt", "--tenant", "acme", "--no-progress"]) == 0
        assert main(["cache", "seed", "names.txt", "--tenant", "acme", "--no-progress"]) == 0
    reports = [r.getMessage() for r in caplog.records if r.getMessage().startswith("seeded")]
    assert reports == [
        "seeded acme in sqlite (all-mpnet-base-v2): 5 lines, 3 distinct texts, 0 already cached, 3 embedded now, "
        "1 over 40 characters skipped",
        "seeded acme in sqlite (all-mpnet-base-v2): 5 lines, 3 distinct texts, 3 already cached, 0 embedded now, "
        "1 over 40 characters skipped",
    ]
    assert served_cached_flags(env, ["Alan Turing", "Edsger Dijkstra", "Ada Lovelace"]) == [True, False, True]
    cache = SqliteEmbeddingCache(env / "data" / "embedding-cache.sqlite3")
    assert cache.stats("acme") == CacheStats(hits=2, misses=1, entries=4)  # seeding counts nothing


def test_shared_pool_serves_other_tenants_only_when_enabled(env: Path) -> None:
    (env / "public.txt").write_text("Public holiday\nTown hall\n")
    assert main(["cache", "seed", "public.txt", "--shared", "--no-progress"]) == 0
    assert served_cached_flags(env, ["Public holiday", "Town hall"]) == [False, False]
    assert served_cached_flags(env, ["Town hall", "Other"], shared_pool=True) == [True, False]


def test_seed_refuses_what_it_cannot_do(
    env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (env / "t.txt").write_text("text\n")
    assert main(["cache", "seed", "missing.txt", "--tenant", "acme", "--no-progress"]) == 2
    assert main(["cache", "seed", "t.txt", "--tenant", "Not A Tenant", "--no-progress"]) == 2
    monkeypatch.setenv("CACHE_BACKEND", "memory")
    assert main(["cache", "seed", "t.txt", "--tenant", "acme", "--no-progress"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "no such file: missing.txt",
        "tenant 'Not A Tenant' is not a tenant name (lowercase letters, digits, '_', '.', '-').",
        "CACHE_BACKEND=memory keeps nothing outside the server; seed sqlite or postgres.",
    ]


def test_migrate_and_stats_commands(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "migrate"]) == 0
    assert (env / "data" / "embedding-cache.sqlite3").is_file()
    (env / "t.txt").write_text("one\ntwo\n")
    assert main(["cache", "seed", "t.txt", "--shared", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["cache", "stats", "--shared"]) == 0
    assert capsys.readouterr().out == "hits=0 misses=0 entries=2\n"


class InterruptedLoader(FakeEmbedderLoader):
    """The fake model, interrupted (Ctrl-C) on its third model call."""

    def load(self) -> FakeEmbedder:
        embedder = super().load()
        inner = embedder.embed

        def embed(texts: Sequence[str]) -> Vectors:
            if len(embedder.calls) == 2:
                raise KeyboardInterrupt
            return inner(texts)

        embedder.embed = embed  # type: ignore[method-assign]
        return embedder


def test_an_interrupted_seed_keeps_its_stored_chunks_and_a_rerun_continues(tmp_path: Path) -> None:
    cache = SqliteEmbeddingCache(tmp_path / "c.sqlite3")
    texts = [f"text {i}" for i in range(10)]
    limits = Limits(max_input_length=100, max_batch_size=100)
    with pytest.raises(KeyboardInterrupt):
        SeedCache(InterruptedLoader(SPEC), cache, limits, chunk_size=3).execute(texts, SHARED_POOL)
    assert cache.stats(SHARED_POOL).entries == 6
    report = SeedCache(FakeEmbedderLoader(SPEC), cache, limits, chunk_size=3).execute(texts, SHARED_POOL)
    assert (report.already_cached, report.embedded) == (6, 4)
    info = FakeEmbedder(SPEC).info
    scope = CacheScope(SHARED_POOL, info.cache_model, info.cache_variant)
    stored = cache.get(scope, [text_key(info.text_key, t) for t in texts], count=False)
    assert len(stored) == 10


def test_a_model_with_prompts_is_seeded_as_documents_are_requested(tmp_path: Path) -> None:
    """Seeded texts are documents: keyed (and embedded) with the document prompt, as a request of them is."""
    import dataclasses

    prompted = dataclasses.replace(SPEC, prompts=(("document", "passage: "), ("query", "query: ")))
    cache = SqliteEmbeddingCache(tmp_path / "c.sqlite3")
    limits = Limits(max_input_length=100, max_batch_size=100)
    SeedCache(FakeEmbedderLoader(prompted), cache, limits).execute(["farmers market"], "acme")
    info = FakeEmbedder(prompted).info
    scope = CacheScope("acme", info.cache_model, info.cache_variant)
    as_document = text_key(info.text_key, "passage: farmers market")
    stored = cache.get(scope, [as_document, text_key(info.text_key, "farmers market")], count=False)
    assert list(stored) == [as_document]
    assert (stored[as_document] == FakeEmbedder(prompted).embed(["passage: farmers market"])[0]).all()
