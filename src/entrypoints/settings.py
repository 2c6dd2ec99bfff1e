"""Service configuration, read from the environment and `.env` (see .env.example)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.model import KNOWN_MODELS, TENANT_NAME, ModelSpec, resolve_model

LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s - %(message)s"
LOG_DATEFMT = "%Y-%m-%d %H:%M:%S"


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt=LOG_DATEFMT)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    model_name: str = Field(
        "all-mpnet-base-v2",
        description=f"the model served: {', '.join(KNOWN_MODELS)}, a models lock file entry, or its hub id",
    )
    models: str = Field(
        "",
        description="several models in one process: comma-separated names, the first the default (overrides "
        "MODEL_NAME); unset: MODEL_NAME alone",
    )
    models_lock: Path = Field(
        Path("./models.lock.json"), description="the models lock file (`embedding-service models add`)"
    )
    model_trust_remote_code: bool = Field(
        False, description="serve (and add) pinned models whose architecture runs code from their repository"
    )
    model_path: Path = Path("./models")
    embedder_backend: Literal["sentence_transformers", "fake"] = "sentence_transformers"
    device: str = Field("auto", description="auto, cpu, cuda, cuda:0, mps ...")
    inference_backend: Literal["auto", "torch", "onnx", "openvino"] = Field(
        "auto", description="auto: torch on a CUDA GPU, onnx (ONNX Runtime) on CPU; or torch, onnx, openvino"
    )
    precision: Literal["auto", "fp32", "fp16"] = Field("auto", description="auto: fp16 for torch on CUDA, else fp32")
    quantization: Literal["none", "int8"] = Field("none", description="int8: opt-in, onnx backend only, lossy")
    backend_min_cosine: float = Field(
        0.9999, gt=0, le=1, description="agreement with torch fp32 a non-reference backend must reach to be served"
    )
    int8_min_cosine: float = Field(
        0.995, gt=0, le=1, description="agreement with torch fp32 the opt-in int8 graph (QUANTIZATION=int8) must reach"
    )

    max_input_length: int = Field(8192, gt=0, description="characters per input")
    max_batch_size: int = Field(100, gt=0)
    openai_max_inputs: int = Field(
        2048, gt=0, description="inputs per POST /v1/embeddings request (at most MAX_QUEUED_TEXTS are ever taken)"
    )
    max_body_bytes: int = Field(1_048_576, gt=0)
    max_header_bytes: int = Field(32768, ge=1024, description="request line and headers, in bytes (else 431)")
    client_header_timeout_seconds: float = Field(
        10.0, gt=0, description="time a client has to send the request line and headers (else 408, closed)"
    )
    client_body_timeout_seconds: float = Field(
        30.0, gt=0, description="time a client has to send the body once the headers are in (else 408, closed)"
    )
    timeout_seconds: float = Field(10.0, gt=0)
    shutdown_drain_seconds: float = Field(
        8.0,
        ge=0,
        description="on SIGTERM, new requests get 503 shutting_down while those in flight finish, at most this long "
        "(then 1 s more for the server's own shutdown, and the model call then running); 0: stop at once",
    )
    keep_alive_seconds: int = Field(
        5,
        gt=0,
        description="how long an idle kept-alive connection stays open; behind a load balancer that reuses its "
        "connections, above the balancer's idle timeout (AWS ALB: 60 s)",
    )
    max_workers: int = Field(1, gt=0, description="inference threads taking batches from the shared queue")
    max_queued_texts: int = Field(2048, gt=0, description="texts allowed to wait or run before 503 overloaded")
    micro_batch_size: int = Field(32, gt=0, description="most texts in one model call, across requests")
    max_batch_tokens: int = Field(8192, gt=0, description="most padded tokens in one model call")
    batch_wait_ms: float = Field(50.0, ge=0, description="how long a worker waits for stragglers to fill a batch")

    peoplepad_client_key: SecretStr | None = Field(None, description="its callers are the tenant 'peoplepad'")
    embedding_api_key: SecretStr | None = Field(None, description="its callers are the tenant 'default'")
    tenant_api_keys: dict[str, SecretStr] = Field(
        default_factory=dict, description='hosted mode: JSON object of tenant name -> key, e.g. {"acme": "..."}'
    )
    allow_unauthenticated: bool = False
    docs_enabled: bool = Field(True, description="serve /openapi.json, /docs and /redoc (without a key)")

    hosted: bool = Field(False, description="hosted mode: accounts, API keys, tiers, quotas and usage under /v1")
    database_url: SecretStr | None = Field(
        None, description="postgresql://user:password@host:5432/db; unset: SQLite file in DATA_DIR"
    )
    cache_backend: Literal["none", "memory", "sqlite", "postgres"] | None = Field(
        None,
        description="embedding cache: none, memory (bounded LRU), sqlite (file in DATA_DIR), postgres; unset: none, "
        "or in hosted mode the service's database (DATABASE_URL, else SQLite)",
    )
    data_dir: Path = Field(Path("./data"), description="where the SQLite database file lives")
    cache_url: SecretStr | None = Field(
        None, description="postgres cache: its own database; unset: DATABASE_URL (postgresql://user:pw@host:5432/db)"
    )
    cache_max_entries: int = Field(100_000, gt=0, description="memory: vectors kept before the least recent goes")
    cache_shared_pool: bool | None = Field(
        None, description="lookups also read the shared pool (cache seed, public texts); unset: on in hosted mode"
    )
    cache_timeout_seconds: float = Field(
        2.0, gt=0, description="bound on connecting and on each database statement (cache, accounts, usage)"
    )
    cache_retry_seconds: float = Field(5.0, gt=0, description="after a cache failure, go without it this long")

    redis_url: SecretStr | None = Field(
        None, description="redis://host:6379/0 for quota counters shared by processes; unset: in-process counters"
    )
    jwt_secret: SecretStr | None = Field(None, description="hosted mode (required): HS256 key, at least 32 bytes")
    jwt_expiry_seconds: int = Field(86400, gt=0, description="lifetime of a login session token")
    signup_enabled: bool = Field(True, description="hosted mode: POST /v1/auth/signup open to the public")
    free_tier_daily_limit: int = Field(1000, ge=0, description="texts per account per UTC day, free tier")
    paid_tier_daily_limit: int = Field(50000, ge=0, description="texts per account per UTC day, paid tier")
    free_tier_per_minute: int = Field(60, ge=0, description="requests per account per minute, free tier")
    paid_tier_per_minute: int = Field(600, ge=0, description="requests per account per minute, paid tier")
    login_max_failures: int = Field(10, gt=0, description="failed logins per email before login is refused")
    login_failure_window_seconds: int = Field(900, gt=0, description="window of LOGIN_MAX_FAILURES (fixed)")
    bcrypt_rounds: int = Field(12, ge=4, le=31, description="cost of password hashes (2^rounds)")
    usage_flush_seconds: float = Field(2.0, gt=0, description="usage is written this often (lost on a crash: this)")

    encryption_key: SecretStr | None = Field(
        None, description="hosted mode (required): comma-separated Fernet keys for provider keys; the first encrypts"
    )
    free_tier_compute: Literal["byok", "local"] = Field(
        "byok", description="hosted mode: the free tier embeds on the account's own provider (byok) or this server"
    )
    byok_allowed_hosts: str = Field(
        "api.openai.com,api.cohere.ai,api.voyageai.com,api.mistral.ai,api.together.xyz",
        description="comma-separated host names a provider endpoint may name (https only)",
    )
    byok_allow_private_hosts: str = Field(
        "", description="comma-separated internal host names allowed although they resolve to private addresses"
    )
    provider_max_batch: int = Field(96, gt=0, description="texts per outbound call to a provider taking $TEXTS")
    provider_connect_timeout_seconds: float = Field(5.0, gt=0, description="connecting to a provider")
    provider_timeout_seconds: float = Field(30.0, gt=0, description="waiting for a provider's answer, per call")
    provider_max_response_bytes: int = Field(8_388_608, gt=0, description="largest provider answer read")

    hf_endpoint: str | None = None
    hf_token: SecretStr | None = None
    hf_hub_offline: bool = False

    host: str = "0.0.0.0"
    port: int = 8080
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="DEBUG logs every batch")

    metrics_enabled: bool = Field(False, description="serve Prometheus metrics at GET /metrics")
    metrics_key: SecretStr | None = Field(
        None, description="GET /metrics then needs 'Authorization: Bearer <METRICS_KEY>'; unset: open, like /health"
    )
    metrics_multiproc_dir: Path | None = Field(
        None,
        description="serve --workers N>1: the processes' metric files (emptied at start); unset: a temporary folder",
    )

    @field_validator("tenant_api_keys")
    @classmethod
    def _tenant_names(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for tenant in value:
            if not TENANT_NAME.fullmatch(tenant):
                raise ValueError(f"tenant name {tenant!r}: use 1-64 lowercase letters, digits, '_', '.', '-'")
        return value

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        self._resolve_models()
        if self.cache_backend is None:
            self.cache_backend = ("postgres" if self.database_url else "sqlite") if self.hosted else "none"
        if self.cache_shared_pool is None:
            self.cache_shared_pool = self.hosted
        if self.cache_backend == "postgres" and not (self.cache_url or self.database_url):
            raise ValueError(
                "CACHE_BACKEND=postgres needs CACHE_URL or DATABASE_URL (postgresql://user:password@host:5432/db)"
            )
        if self.hosted:
            secret = self.jwt_secret.get_secret_value().encode() if self.jwt_secret else b""
            if len(secret) < 32:
                raise ValueError("HOSTED=true needs JWT_SECRET of at least 32 bytes (e.g. `embedding-service keygen`)")
            if self.encryption_key is None or not self.encryption_key.get_secret_value().strip():
                raise ValueError(
                    "HOSTED=true needs ENCRYPTION_KEY: one or more comma-separated Fernet keys for the providers' "
                    "keys (e.g. `embedding-service keygen --fernet`)"
                )
            from adapters.secrets import FernetSecretBox

            FernetSecretBox(self.encryption_key.get_secret_value())  # a malformed key: refused now, named
        return self

    def _resolve_models(self) -> None:
        from adapters.model_lock import read_lock

        catalog = read_lock(self.models_lock)
        names = [name.strip() for name in self.models.split(",") if name.strip()] or [self.model_name]
        try:
            specs = [resolve_model(name, catalog) for name in names]
        except KeyError as exc:
            where = "" if self.models_lock.exists() else ", which does not exist"
            raise ValueError(
                f"{exc.args[0]} (built-in, or in the models lock file {self.models_lock}{where})"
            ) from None
        if len({spec.name for spec in specs}) != len(specs):
            raise ValueError(f"MODELS names one model twice: {', '.join(names)}")
        if len(names) > 1 or self.models.strip():
            try:
                named = resolve_model(self.model_name, catalog)
            except KeyError as exc:
                raise ValueError(str(exc.args[0])) from None
            if "model_name" in self.model_fields_set and named != specs[0]:
                raise ValueError(
                    f"MODEL_NAME={self.model_name} and MODELS={self.models} disagree on the default model: set "
                    "MODELS alone (its first model is the default), or MODELS= (empty) to serve MODEL_NAME alone"
                )
        for spec in specs:
            if spec.trust_remote_code and not self.model_trust_remote_code:
                raise ValueError(
                    f"{spec.name} runs code from its repository ({spec.hub_id}@{spec.revision[:12]}); serve it only "
                    "with MODEL_TRUST_REMOTE_CODE=true"
                )
        self.model_name = specs[0].name
        self.models = ",".join(spec.name for spec in specs)

    def served_models(self) -> list[str]:
        """The short names of the models served, the default first."""
        return self.models.split(",")

    def catalog(self) -> tuple[ModelSpec, ...]:
        """The models of the lock file."""
        from adapters.model_lock import read_lock

        return read_lock(self.models_lock)

    def byok_hosts(self) -> tuple[frozenset[str], frozenset[str]]:
        """The allowed provider hosts, and the internal ones allowed to resolve to private addresses."""

        def names(value: str) -> frozenset[str]:
            return frozenset(part.strip().lower().rstrip(".") for part in value.split(",") if part.strip())

        return names(self.byok_allowed_hosts), names(self.byok_allow_private_hosts)

    def database(self) -> DatabasePlan:
        """Where the service's one database is, and whether the embedding cache lives in it."""
        if self.database_url:
            kind, url = "postgres", self.database_url.get_secret_value()
        elif self.cache_backend == "postgres" and self.cache_url:
            kind, url = "postgres", self.cache_url.get_secret_value()
        else:
            kind, url = "sqlite", str(self.data_dir / SQLITE_FILE)
        cache_url = self.cache_url.get_secret_value() if self.cache_url else url
        shared = (self.cache_backend == "sqlite" and kind == "sqlite") or (
            self.cache_backend == "postgres" and kind == "postgres" and cache_url == url
        )
        cache = "shared" if shared else str(self.cache_backend)
        return DatabasePlan(kind=kind, url=url, cache=cache, cache_url=cache_url)

    def tenant_keys(self) -> dict[str, str]:
        """Every accepted key by the tenant its callers belong to."""
        named = {"peoplepad": self.peoplepad_client_key, "default": self.embedding_api_key}
        for tenant, secret in self.tenant_api_keys.items():
            if named.get(tenant):
                raise ConfigurationError(f"tenant {tenant!r} has a key in TENANT_API_KEYS and in its own variable")
            named[tenant] = secret
        keys = {tenant: secret.get_secret_value() for tenant, secret in named.items() if secret}
        if len(set(keys.values())) != len(keys):
            raise ConfigurationError("the same API key is configured for two tenants; give each tenant its own key")
        return keys


SQLITE_FILE = "embedding-cache.sqlite3"  # the name from when only the cache lived there: kept, so nothing is lost


@dataclass(frozen=True)
class DatabasePlan:
    kind: str  # sqlite or postgres
    url: str  # the file path for sqlite
    cache: str  # shared (in this database), none, memory, sqlite (a file of its own), postgres (CACHE_URL)
    cache_url: str


class ConfigurationError(RuntimeError):
    """The service refuses to start with this configuration."""


def check_startup(settings: Settings) -> None:
    if not settings.tenant_keys() and not settings.allow_unauthenticated and not settings.hosted:
        raise ConfigurationError(
            "no API key configured: set PEOPLEPAD_CLIENT_KEY or EMBEDDING_API_KEY "
            "(or ALLOW_UNAUTHENTICATED=true to serve without authentication)"
        )
