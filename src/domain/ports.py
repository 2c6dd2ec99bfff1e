"""Ports: the interfaces the domain needs from the outside world, as structural Protocols."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Protocol

from domain.model import (
    Account,
    Admission,
    ApiKey,
    CacheScope,
    CacheStats,
    Charge,
    EmbedInput,
    ModelInfo,
    ModelSpec,
    Provider,
    ProviderConfig,
    Tier,
    UsageRecord,
    Vector,
    Vectors,
)


class Embedder(Protocol):
    """A loaded model turning inputs (texts, or token ids of its own tokenizer) into L2-normalized float32 vectors,
    one row per input, in input order."""

    @property
    def info(self) -> ModelInfo: ...

    @property
    def vocabulary_size(self) -> int:
        """Token ids run from 0 to this, exclusive."""
        ...

    @property
    def special_token_ids(self) -> frozenset[int]:
        """Ids its tokenizer adds around a text's tokens, and its padding id: no text of their own."""
        ...

    def embed(self, texts: Sequence[EmbedInput]) -> Vectors: ...

    def token_counts(self, texts: Sequence[EmbedInput]) -> list[int]:
        """How many tokens each input takes in a model call (special tokens included, after truncation)."""
        ...


class InferenceScheduler(Protocol):
    """Runs embedding work off the event loop within a per-request deadline and a bounded queue.

    Raises Overloaded when the work would not finish in time or the queue is full, Timeout when the deadline passes,
    BackendFailure when the model fails on the request's own texts. The deadline counts from `arrived` (a
    time.monotonic() reading taken when the request arrived) when given, else from the call.
    """

    async def run(self, embedder: Embedder, texts: Sequence[EmbedInput], arrived: float | None = None) -> Vectors: ...

    def abandon_all(self, error: Exception) -> int:
        """Answer every request still waiting with `error`; returns how many there were."""
        ...

    def shutdown(self) -> None: ...


class EmbedderLoader(Protocol):
    """Provisions (if needed), loads and pre-warms the configured model; slow, called once at start-up."""

    @property
    def spec(self) -> ModelSpec: ...

    def load(self) -> Embedder: ...


class ModelProvisioner(Protocol):
    """Makes verified weights of a model available on local disk and returns their folder."""

    def ensure(self, spec: ModelSpec) -> Path: ...


class EmbeddingCache(Protocol):
    """Vectors already computed, by scope (tenant, model revision, variant) and text key (sha256 of normalized text).

    Stored as float32 bytes. Any method may raise when the storage fails; the domain then computes without it.
    """

    @property
    def backend(self) -> str:
        """none, memory, sqlite or postgres."""
        ...

    def prepare(self) -> None:
        """Create or migrate the storage; idempotent, safe to run from several processes at once."""
        ...

    def get(
        self, scope: CacheScope, keys: Sequence[bytes], *, shared_pool: bool = False, count: bool = True
    ) -> dict[bytes, Vector]:
        """The stored vectors of `keys` (missing keys absent): the tenant's own entries, else the shared pool's when
        `shared_pool`. With `count`, the served entries' hit counts and the tenant's hit/miss counters grow by one per
        key, in the same transaction."""
        ...

    def put(self, scope: CacheScope, vectors: Mapping[bytes, Vector]) -> None:
        """Store all of `vectors` or none of them; keys already stored keep their first vector."""
        ...

    def stats(self, tenant: str) -> CacheStats:
        """The tenant's hit and miss counters and how many entries it owns."""
        ...

    def close(self) -> None: ...


class RequestCache(Protocol):
    """The embedding cache as requests use it: never fails a request (a storage failure is a miss), and gives up on
    a call that cannot start within its bound."""

    @property
    def enabled(self) -> bool: ...

    @property
    def backend(self) -> str: ...

    @property
    def settled(self) -> bool:
        """The start-up preparation has run (whether the storage answered or not)."""
        ...

    def start(self) -> None: ...

    async def lookup_in_time(
        self, scope: CacheScope, keys: Sequence[bytes], shared_pool: bool = True
    ) -> dict[bytes, Vector]:
        """The tenant's own entries, then (when the shared pool is read, and `shared_pool`) the shared pool's."""
        ...

    async def save_in_time(self, scope: CacheScope, vectors: Mapping[bytes, Vector]) -> None: ...

    def stats(self, tenant: str) -> CacheStats:
        """Raises CacheUnavailable when the storage cannot answer."""
        ...

    def close(self) -> None: ...


class AccountStore(Protocol):
    """Accounts of the hosted mode. `add` stores the account and its first key in one transaction."""

    def add(self, account: Account, first_key: ApiKey) -> None:
        """Raises EmailTaken when the email has an account."""
        ...

    def by_email(self, email: str) -> Account | None: ...

    def by_id(self, account_id: str) -> Account | None: ...

    def set_tier(self, email: str, tier: Tier) -> Account:
        """Raises UnknownAccount."""
        ...

    def list(self) -> list[Account]: ...


class ApiKeyStore(Protocol):
    """API keys by SHA-256 digest (indexed); a key is never stored itself."""

    def add(self, key: ApiKey) -> None: ...

    def find(self, digest: bytes) -> tuple[ApiKey, Account] | None:
        """The key with this digest and its account, revoked or not."""
        ...

    def list(self, account_id: str) -> list[ApiKey]: ...

    def revoke(self, account_id: str, prefix: str, at: datetime) -> bool:
        """Revoke the account's key with this prefix; False when it has none (revoking twice is True)."""
        ...

    def touch(self, last_used: Mapping[str, datetime]) -> None:
        """Record when keys (by id) were last used, in one statement batch."""
        ...


class UsageLedger(Protocol):
    """Usage per account, UTC day and model."""

    def add(self, records: Sequence[UsageRecord]) -> None:
        """Add the records' counts to the stored rows, all or none."""
        ...

    def read(self, account_id: str, since: date) -> list[UsageRecord]: ...


class UsageRecorder(Protocol):
    """Usage and key activity as requests report them: buffered, written in the background, flushed on close."""

    def record(self, usage: UsageRecord) -> None: ...

    def touch(self, key_id: str, at: datetime) -> None:
        """The key was used now (written with the next flush: no database write per request)."""
        ...

    def read(self, account_id: str, since: date) -> list[UsageRecord]:
        """Stored rows plus what is still buffered."""
        ...

    def last_used(self, key_id: str) -> datetime | None:
        """A buffered use of the key not yet written, if any."""
        ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class RateLimiter(Protocol):
    """Fixed-window counters shared by every process that uses the same store. `hit` is atomic: either every charge
    fits its window and all are consumed, or nothing is consumed."""

    def hit(self, charges: Sequence[Charge], now: float) -> Admission: ...

    def refund(self, charges: Sequence[Charge], now: float) -> None:
        """Give back what `hit(charges, now)` consumed (for a request that then failed)."""
        ...


class PasswordHasher(Protocol):
    """Slow on purpose (bcrypt); runs off the event loop, refusing (Overloaded) rather than queueing without bound.
    `dummy_hash` has the same cost: verifying against it takes as long as a real check."""

    @property
    def dummy_hash(self) -> str: ...

    async def hash(self, password: str) -> str: ...

    async def verify(self, password: str, hashed: str) -> bool: ...


class TokenIssuer(Protocol):
    """Signed, expiring session tokens for the account routes."""

    @property
    def expires_in(self) -> int: ...

    def issue(self, account_id: str) -> str: ...

    def subject(self, token: str) -> str | None:
        """The account id of a valid, unexpired token; None for anything else."""
        ...


class ProviderStore(Protocol):
    """Each account's one bring-your-own-key provider."""

    def get(self, account_id: str) -> Provider | None: ...

    def put(self, provider: Provider) -> None:
        """Store the account's provider, replacing the one it had."""
        ...

    def delete(self, account_id: str) -> bool:
        """Remove the account's provider; False when it had none."""
        ...

    def all(self) -> list[Provider]: ...

    def replace_keys(self, keys: Mapping[str, bytes]) -> int:
        """Store new encrypted keys by provider id, all or none; returns how many were written."""
        ...


class SecretBox(Protocol):
    """Encrypts secrets at rest (provider keys): the first configured key encrypts, every one decrypts."""

    def encrypt(self, plaintext: str) -> bytes: ...

    def decrypt(self, token: bytes) -> str: ...

    def rotate(self, token: bytes) -> bytes:
        """The token re-encrypted under the first key."""
        ...


class RemoteEmbedder(Protocol):
    """Calls an account's provider: L2-normalized float32 rows, one per text, in order; raises the Provider*
    errors (and EndpointRefused for an endpoint the outbound rules refuse)."""

    async def embed(self, config: ProviderConfig, api_key: str, texts: Sequence[str]) -> Vectors: ...

    def identity(self, config: ProviderConfig) -> str:
        """What decides a provider's numbers, as cache entries and usage name it: its host and its model."""
        ...

    async def check(self, config: ProviderConfig) -> ProviderConfig:
        """Refuse, before it is stored, a provider whose endpoint (its URL and the addresses its name resolves to),
        template or response path cannot work; returns it with its endpoint as it will be called."""
        ...


class MetricsRecorder(Protocol):
    """Where the service's measurements go (Prometheus, or nowhere): adapters report what they see through it."""

    @property
    def enabled(self) -> bool:
        """False: every call does nothing, so callers may skip computing what they would report."""
        ...

    def model_call(self, model: str, texts: int, tokens: int, seconds: float) -> None: ...

    def queued_texts(self, texts: int, model: str = "") -> None: ...

    def cache_lookup(self, hits: int, misses: int) -> None: ...

    def rate_limited(self, window: str) -> None: ...

    def overloaded(self) -> None: ...

    def model_loaded(self, model: str, seconds: float) -> None: ...

    def request(self, route: str, method: str, status: int, seconds: float) -> None: ...
