"""Composition root: builds adapters and use cases from Settings with dependency-injector."""

from __future__ import annotations

from pathlib import Path

from dependency_injector import containers, providers

from adapters.dynamic_batcher import BatchPolicy, DynamicBatchingScheduler
from adapters.fake_embedder import FakeEmbedderLoader
from adapters.memory_cache import InMemoryEmbeddingCache, NoEmbeddingCache
from adapters.model_provisioning import (
    HuggingFaceHubModelSource,
    ModelSource,
    PyPIModelSource,
    VerifiedModelProvisioner,
)
from adapters.sentence_transformer_loader import SentenceTransformerLoader
from domain.model import Limits, resolve_model
from domain.ports import EmbeddingCache
from domain.services import FailSafeCache, ModelHost
from domain.use_cases import (
    AuthenticateCaller,
    EmbedBatch,
    EmbedOne,
    GetCacheStats,
    GetHealth,
    GetMetadata,
    SeedCache,
)
from entrypoints.settings import Settings


def model_sources(offline: bool, endpoint: str | None, token: str | None) -> list[ModelSource]:
    hub: list[ModelSource] = [] if offline else [HuggingFaceHubModelSource(endpoint, token)]
    return [*hub, PyPIModelSource()]


def secret(value: object) -> str | None:
    getter = getattr(value, "get_secret_value", None)
    return getter() if getter else (str(value) if value else None)


SQLITE_FILE = "embedding-cache.sqlite3"


def sqlite_cache(data_dir: str | Path, timeout_s: float) -> EmbeddingCache:
    from adapters.sql_cache import SqliteEmbeddingCache  # SQLAlchemy and Alembic load only when a SQL cache is used

    return SqliteEmbeddingCache(Path(data_dir) / SQLITE_FILE, timeout_s=timeout_s)


def postgres_cache(url: str, timeout_s: float) -> EmbeddingCache:
    from adapters.sql_cache import PostgresEmbeddingCache

    return PostgresEmbeddingCache(url, timeout_s=timeout_s)


class Container(containers.DeclarativeContainer):
    config = providers.Configuration(strict=True)

    model_spec = providers.Callable(resolve_model, config.model_name)

    provisioner = providers.Singleton(
        VerifiedModelProvisioner,
        root=providers.Callable(Path, config.model_path),
        sources=providers.Callable(
            model_sources,
            offline=config.hf_hub_offline,
            endpoint=config.hf_endpoint,
            token=providers.Callable(secret, config.hf_token),
        ),
    )

    loader = providers.Selector(
        config.embedder_backend,
        sentence_transformers=providers.Singleton(
            SentenceTransformerLoader,
            model_spec,
            provisioner,
            device=config.device,
            backend=config.inference_backend,
            precision=config.precision,
            quantization=config.quantization,
            min_cosine=config.backend_min_cosine,
        ),
        fake=providers.Singleton(FakeEmbedderLoader, model_spec),
    )

    host = providers.Singleton(ModelHost, loader)
    batch_policy = providers.Factory(
        BatchPolicy,
        max_texts=config.micro_batch_size,
        max_tokens=config.max_batch_tokens,
        max_wait_s=providers.Callable(lambda ms: ms / 1000, config.batch_wait_ms),
    )
    scheduler = providers.Singleton(
        DynamicBatchingScheduler,
        timeout_s=config.timeout_seconds,
        max_queued_texts=config.max_queued_texts,
        policy=batch_policy,
        max_workers=config.max_workers,
    )
    limits = providers.Singleton(Limits, max_input_length=config.max_input_length, max_batch_size=config.max_batch_size)

    cache_store = providers.Selector(
        config.cache_backend,
        none=providers.Singleton(NoEmbeddingCache),
        memory=providers.Singleton(InMemoryEmbeddingCache, max_entries=config.cache_max_entries),
        sqlite=providers.Singleton(sqlite_cache, config.data_dir, timeout_s=config.cache_timeout_seconds),
        postgres=providers.Singleton(
            postgres_cache, providers.Callable(secret, config.cache_url), timeout_s=config.cache_timeout_seconds
        ),
    )
    cache = providers.Singleton(
        FailSafeCache,
        cache_store,
        shared_pool=config.cache_shared_pool,
        retry_after_s=config.cache_retry_seconds,
        wait_s=config.cache_timeout_seconds,
    )

    embed_one = providers.Factory(EmbedOne, host, scheduler, limits, cache)
    embed_batch = providers.Factory(EmbedBatch, host, scheduler, limits, cache)
    get_health = providers.Factory(GetHealth, host, cache)
    get_metadata = providers.Factory(GetMetadata, host, limits)
    get_cache_stats = providers.Factory(GetCacheStats, cache)
    seed_cache = providers.Factory(SeedCache, loader, cache_store, limits)
    authenticate = providers.Singleton(AuthenticateCaller, config.tenant_keys)


def build_container(settings: Settings) -> Container:
    container = Container()
    container.config.from_dict({**settings.model_dump(), "tenant_keys": settings.tenant_keys()})
    return container
