"""Composition root: builds adapters and use cases from Settings with dependency-injector."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from dependency_injector import containers, providers

from adapters.dynamic_batcher import BatchPolicy, DynamicBatchingScheduler
from adapters.fake_embedder import FakeEmbedderLoader
from adapters.memory_cache import InMemoryEmbeddingCache, NoEmbeddingCache
from adapters.metrics import NoMetrics, PrometheusMetrics
from adapters.model_lock import read_lock
from adapters.model_provisioning import (
    HuggingFaceHubModelSource,
    ModelSource,
    PyPIModelSource,
    VerifiedModelProvisioner,
)
from adapters.rate_limiting import InMemoryRateLimiter
from adapters.resilience import FailoverRateLimiter, FailSafeCache
from adapters.sentence_transformer_loader import SentenceTransformerLoader
from adapters.usage_buffer import BufferedUsageRecorder, NoUsageRecorder
from domain.model import Limits, ModelSpec, Tier, resolve_model
from domain.ports import (
    AccountStore,
    ApiKeyStore,
    EmbedderLoader,
    EmbeddingCache,
    InferenceScheduler,
    ProviderStore,
    RateLimiter,
    RemoteEmbedder,
    SecretBox,
    UsageLedger,
)
from domain.services import ModelHost, ModelPool, ServedModel
from domain.use_cases import (
    AuthenticateAccount,
    AuthenticateCaller,
    CreateKey,
    DeleteProvider,
    EmbedBatch,
    EmbedInputs,
    EmbedOne,
    GetCacheStats,
    GetHealth,
    GetMetadata,
    GetProvider,
    GetUsage,
    ListAccounts,
    ListKeys,
    ListModels,
    LogIn,
    LoginThrottle,
    MeterRequests,
    RevokeKey,
    RotateProviderKeys,
    SeedCache,
    SetProvider,
    SetTier,
    SignUp,
    TierLimits,
)
from domain.use_cases.embedding import ByokRouting
from entrypoints.settings import ConfigurationError, Settings

T = TypeVar("T")


def model_sources(offline: bool, endpoint: str | None, token: str | None) -> list[ModelSource]:
    hub: list[ModelSource] = [] if offline else [HuggingFaceHubModelSource(endpoint, token)]
    return [*hub, PyPIModelSource()]


def served_specs(names: list[str], lock: str | Path) -> list[ModelSpec]:
    """The served models (MODELS, else MODEL_NAME), the default first: built-in ones or the lock file's."""
    catalog = read_lock(Path(lock))
    return [resolve_model(name, catalog) for name in names]


def model_pool(
    specs: list[ModelSpec],
    default_loader: EmbedderLoader,
    loader_for: Callable[[ModelSpec], EmbedderLoader],
    scheduler_for: Callable[..., InferenceScheduler],
) -> ModelPool:
    """Each served model with its own loader (and agreement gate) and batcher; the batchers share the cores. The
    default model's loader is the container's `loader`."""
    loaders = [default_loader, *(loader_for(spec) for spec in specs[1:])]
    return ModelPool([ServedModel(ModelHost(loader), scheduler_for(model=loader.spec.name)) for loader in loaders])


def secret(value: object) -> str | None:
    getter = getattr(value, "get_secret_value", None)
    return getter() if getter else (str(value) if value else None)


# SQLAlchemy, Alembic, psycopg, redis, bcrypt and PyJWT load only when a database, Redis or accounts are used.


def sql_database(kind: str, url: str, timeout_s: float) -> Any:
    from adapters.sql.database import PostgresDatabase, SqliteDatabase

    return PostgresDatabase(url, timeout_s=timeout_s) if kind == "postgres" else SqliteDatabase(Path(url), timeout_s)


def shared_sql_cache(database: Any, accounts: str) -> EmbeddingCache:
    """The cache in the service's database; it closes the database unless accounts (hosted mode) use it too."""
    from adapters.sql.cache import SqlEmbeddingCache

    return SqlEmbeddingCache(database, owns_database=accounts == "none")


def sqlite_cache(data_dir: str | Path, timeout_s: float) -> EmbeddingCache:
    from adapters.sql.cache import SqliteEmbeddingCache
    from entrypoints.settings import SQLITE_FILE

    return SqliteEmbeddingCache(Path(data_dir) / SQLITE_FILE, timeout_s=timeout_s)


def postgres_cache(url: str, timeout_s: float) -> EmbeddingCache:
    from adapters.sql.cache import PostgresEmbeddingCache

    return PostgresEmbeddingCache(url, timeout_s=timeout_s)


def sql_stores(database: Any) -> tuple[AccountStore, ApiKeyStore, UsageLedger, ProviderStore]:
    from adapters.resilience import OutageLog
    from adapters.sql.accounts import SqlAccountStore, SqlApiKeyStore, SqlProviderStore, SqlUsageLedger

    outage = OutageLog("account database")  # one warning per outage of the database, whichever store saw it
    return (
        SqlAccountStore(database, outage),
        SqlApiKeyStore(database, outage),
        SqlUsageLedger(database, outage),
        SqlProviderStore(database, outage),
    )


def outbound_policy(
    hosts: tuple[frozenset[str], frozenset[str]], connect_s: float, read_s: float, max_bytes: int
) -> Any:
    from adapters.outbound import OutboundPolicy

    allowed, private = hosts
    try:
        return OutboundPolicy(
            allowed_hosts=allowed,
            private_hosts=private,
            connect_timeout_s=connect_s,
            read_timeout_s=read_s,
            max_response_bytes=max_bytes,
        )
    except ValueError as exc:
        raise ConfigurationError(f"BYOK_ALLOWED_HOSTS / BYOK_ALLOW_PRIVATE_HOSTS: {exc}") from None


def remote_embedder(policy: Any, max_batch: int) -> RemoteEmbedder:
    from adapters.providers import remote_providers

    return remote_providers(policy, max_batch)


def secret_box(keys: str | None) -> SecretBox:
    from adapters.secrets import FernetSecretBox

    if not keys:
        raise ConfigurationError("provider keys need ENCRYPTION_KEY (`embedding-service keygen --fernet`)")
    return FernetSecretBox(keys)


def rate_limiter(url: str | None, retry_after_s: float) -> RateLimiter:
    if not url:
        return InMemoryRateLimiter()
    from adapters.rate_limiting import RedisRateLimiter

    return FailoverRateLimiter(RedisRateLimiter.from_url(url), InMemoryRateLimiter(), retry_after_s=retry_after_s)


def password_hasher(rounds: int) -> Any:
    from adapters.security import BcryptPasswordHasher, IsolatedPasswordHasher

    return IsolatedPasswordHasher(BcryptPasswordHasher(rounds))


def token_issuer(secret: str, expires_in: int) -> Any:
    from adapters.security import JwtTokenIssuer

    return JwtTokenIssuer(secret, expires_in)


def tier_limits(free_day: int, free_minute: int, paid_day: int, paid_minute: int) -> dict[Tier, TierLimits]:
    return {Tier.FREE: TierLimits(free_day, free_minute), Tier.PAID: TierLimits(paid_day, paid_minute)}


class Container(containers.DeclarativeContainer):
    config = providers.Configuration(strict=True)

    specs = providers.Singleton(served_specs, config.served_models, config.models_lock)
    model_spec = providers.Callable(lambda specs: specs[0], specs)  # the default model

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

    loader_for = providers.Selector(  # called with a ModelSpec: a loader of that model
        config.embedder_backend,
        sentence_transformers=providers.Factory(
            SentenceTransformerLoader,
            provisioner=provisioner,
            device=config.device,
            backend=config.inference_backend,
            precision=config.precision,
            quantization=config.quantization,
            min_cosine=config.backend_min_cosine,
            int8_min_cosine=config.int8_min_cosine,
            trust_remote_code=config.model_trust_remote_code,
        ),
        fake=providers.Factory(FakeEmbedderLoader),
    )
    loader = providers.Singleton(lambda make, spec: make(spec), loader_for.provider, model_spec)  # the default's

    metrics = providers.Selector(
        config.metrics,
        none=providers.Singleton(NoMetrics),
        prometheus=providers.Singleton(PrometheusMetrics),
    )
    batch_policy = providers.Factory(
        BatchPolicy,
        max_texts=config.micro_batch_size,
        max_tokens=config.max_batch_tokens,
        max_wait_s=providers.Callable(lambda ms: ms / 1000, config.batch_wait_ms),
    )
    cores = providers.Singleton(threading.Semaphore, config.max_workers)  # model calls at once, all models together
    scheduler_for = providers.Factory(  # called with model=<name>: that model's batcher
        DynamicBatchingScheduler,
        timeout_s=config.timeout_seconds,
        max_queued_texts=config.max_queued_texts,
        policy=batch_policy,
        max_workers=config.max_workers,
        metrics=metrics,
        cores=cores,
    )
    models = providers.Singleton(model_pool, specs, loader, loader_for.provider, scheduler_for.provider)
    host = providers.Callable(lambda models: models.default.host, models)  # the default model's
    limits = providers.Singleton(Limits, max_input_length=config.max_input_length, max_batch_size=config.max_batch_size)
    openai_limits = providers.Singleton(
        Limits,
        max_input_length=config.max_input_length,
        max_batch_size=providers.Callable(min, config.openai_max_inputs, config.max_queued_texts),
    )

    database = providers.Singleton(
        sql_database, config.database.kind, config.database.url, timeout_s=config.cache_timeout_seconds
    )

    cache_store = providers.Selector(
        config.database.cache,
        none=providers.Singleton(NoEmbeddingCache),
        memory=providers.Singleton(InMemoryEmbeddingCache, max_entries=config.cache_max_entries),
        shared=providers.Singleton(shared_sql_cache, database, config.accounts),
        sqlite=providers.Singleton(sqlite_cache, config.data_dir, timeout_s=config.cache_timeout_seconds),
        postgres=providers.Singleton(postgres_cache, config.database.cache_url, timeout_s=config.cache_timeout_seconds),
    )
    cache = providers.Singleton(
        FailSafeCache,
        cache_store,
        shared_pool=config.cache_shared_pool,
        retry_after_s=config.cache_retry_seconds,
        wait_s=config.cache_timeout_seconds,
        metrics=metrics,
    )

    stores = providers.Singleton(sql_stores, database)
    accounts = providers.Callable(lambda stores: stores[0], stores)
    api_keys = providers.Callable(lambda stores: stores[1], stores)
    provider_store = providers.Callable(lambda stores: stores[3], stores)
    box = providers.Singleton(secret_box, providers.Callable(secret, config.encryption_key))
    outbound = providers.Singleton(
        outbound_policy,
        config.byok_hosts,
        config.provider_connect_timeout_seconds,
        config.provider_timeout_seconds,
        config.provider_max_response_bytes,
    )
    remote = providers.Singleton(remote_embedder, outbound, config.provider_max_batch)
    usage = providers.Selector(
        config.accounts,
        none=providers.Singleton(NoUsageRecorder),
        sql=providers.Singleton(
            BufferedUsageRecorder,
            providers.Callable(lambda stores: stores[2], stores),
            api_keys,
            flush_s=config.usage_flush_seconds,
            spill_dir=providers.Callable(Path, config.data_dir),
        ),
    )
    limiter = providers.Singleton(
        rate_limiter, providers.Callable(secret, config.redis_url), retry_after_s=config.cache_retry_seconds
    )
    hasher = providers.Singleton(password_hasher, config.bcrypt_rounds)
    tokens = providers.Singleton(
        token_issuer, providers.Callable(secret, config.jwt_secret), expires_in=config.jwt_expiry_seconds
    )
    tiers = providers.Singleton(
        tier_limits,
        config.free_tier_daily_limit,
        config.free_tier_per_minute,
        config.paid_tier_daily_limit,
        config.paid_tier_per_minute,
    )

    byok = providers.Selector(
        config.accounts,
        none=providers.Object(None),
        sql=providers.Singleton(ByokRouting, provider_store, box, remote, config.free_tier_compute),
    )
    embed_one = providers.Factory(EmbedOne, models, limits, cache, usage, byok)
    embed_batch = providers.Factory(EmbedBatch, models, limits, cache, usage, byok)
    embed_inputs = providers.Factory(EmbedInputs, models, openai_limits, cache, usage, byok)
    list_models = providers.Factory(ListModels, models)
    get_health = providers.Factory(GetHealth, models, cache)
    get_metadata = providers.Factory(GetMetadata, models, limits)
    get_cache_stats = providers.Factory(GetCacheStats, cache)
    seed_cache = providers.Factory(SeedCache, loader, cache_store, limits)
    authenticate = providers.Selector(
        config.accounts,
        none=providers.Singleton(AuthenticateCaller, config.tenant_keys),
        sql=providers.Singleton(AuthenticateCaller, config.tenant_keys, api_keys, usage),
    )
    meter_requests = providers.Singleton(MeterRequests, limiter, tiers)
    get_usage = providers.Factory(GetUsage, usage)
    sign_up = providers.Factory(SignUp, accounts, hasher, config.signup_enabled)
    log_in = providers.Factory(
        LogIn,
        accounts,
        hasher,
        tokens,
        limiter,
        providers.Factory(LoginThrottle, config.login_max_failures, config.login_failure_window_seconds),
    )
    authenticate_account = providers.Factory(AuthenticateAccount, tokens, accounts)
    create_key = providers.Factory(CreateKey, api_keys)
    list_keys = providers.Factory(ListKeys, api_keys, usage)
    revoke_key = providers.Factory(RevokeKey, api_keys)
    set_tier = providers.Factory(SetTier, accounts)
    list_accounts = providers.Factory(ListAccounts, accounts)
    register_provider = providers.Factory(SetProvider, provider_store, box, remote)
    get_provider = providers.Factory(GetProvider, provider_store)
    delete_provider = providers.Factory(DeleteProvider, provider_store)
    rotate_provider_keys = providers.Factory(RotateProviderKeys, provider_store, box)


_PROVIDER_OF: dict[type, str] = {}


def use_case(container: Container, kind: type[T]) -> T:
    """The use case of this class, from the one provider that builds it (dependency-injector resolves its ports):
    one generic getter instead of one per use case."""
    name = _PROVIDER_OF.get(kind)
    if name is None:
        name = _PROVIDER_OF[kind] = _provider_name(kind)
    built: T = getattr(container, name)()
    return built


def _provider_name(kind: type) -> str:
    for name, provider in Container.cls_providers.items():
        options = getattr(provider, "providers", None) if isinstance(provider, providers.Selector) else None
        candidates = [provider, *(options.values() if options else [])]
        if any(getattr(candidate, "provides", None) is kind for candidate in candidates):
            return name
    raise LookupError(f"no provider builds {kind.__name__}")


def build_container(settings: Settings) -> Container:
    container = Container()
    plan = settings.database()
    container.config.from_dict(
        {
            **settings.model_dump(),
            "tenant_keys": settings.tenant_keys(),
            "served_models": settings.served_models(),
            "database": {"kind": plan.kind, "url": plan.url, "cache": plan.cache, "cache_url": plan.cache_url},
            "accounts": "sql" if settings.hosted else "none",
            "metrics": "prometheus" if settings.metrics_enabled else "none",
            "byok_hosts": settings.byok_hosts(),
        }
    )
    return container
