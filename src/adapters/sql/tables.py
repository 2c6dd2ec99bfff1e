"""Every table of the service's one SQL database, as SQLAlchemy Core metadata (the Alembic migrations in
adapters/sql/migrations create and upgrade them): the embedding cache, accounts, API keys, the usage ledger and the
accounts' bring-your-own-key providers."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    func,
)

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

accounts = Table(
    "embedding_accounts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("email", String(254), nullable=False, unique=True),
    Column("password_hash", String(100), nullable=False),
    Column("tier", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

api_keys = Table(
    "embedding_api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account_id", String(40), ForeignKey("embedding_accounts.id", ondelete="CASCADE"), nullable=False),
    Column("prefix", String(16), nullable=False, unique=True),
    Column("digest", LargeBinary(32), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Index("ix_embedding_api_keys_account_id", "account_id"),
)

usage = Table(
    "embedding_usage_daily",
    metadata,
    Column("account_id", String(40), ForeignKey("embedding_accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("requests", BigInteger, nullable=False, server_default="0"),
    Column("texts", BigInteger, nullable=False, server_default="0"),
    Column("tokens", BigInteger, nullable=False, server_default="0"),
    Column("cache_hits", BigInteger, nullable=False, server_default="0"),
    Column("cache_misses", BigInteger, nullable=False, server_default="0"),
    Column("compute_ms", Float, nullable=False, server_default="0"),
)

providers = Table(
    "embedding_providers",
    metadata,
    Column("account_id", String(40), ForeignKey("embedding_accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("id", String(40), nullable=False, unique=True),
    Column("name", String(100), nullable=False),
    Column("endpoint", String(2048), nullable=False),
    Column("request_template", String(16384), nullable=False),
    Column("response_path", String(1024), nullable=False),
    Column("encrypted_key", LargeBinary, nullable=False),  # Fernet token: the key itself is never stored
    Column("key_last4", String(4), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
