"""Hosted mode: accounts, API keys (SHA-256 digests, display prefixes) and the daily usage ledger.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "embedding_accounts",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("password_hash", sa.String(100), nullable=False),
        sa.Column("tier", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
    )
    op.create_table(
        "embedding_api_keys",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("account_id", sa.String(40), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("digest", sa.LargeBinary(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["embedding_accounts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("prefix"),
        sa.UniqueConstraint("digest"),
    )
    op.create_index("ix_embedding_api_keys_account_id", "embedding_api_keys", ["account_id"])
    op.create_table(
        "embedding_usage_daily",
        sa.Column("account_id", sa.String(40), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("requests", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("texts", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cache_hits", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cache_misses", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("compute_ms", sa.Float(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["embedding_accounts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("account_id", "day", "model"),
    )


def downgrade() -> None:
    op.drop_table("embedding_usage_daily")
    op.drop_index("ix_embedding_api_keys_account_id", table_name="embedding_api_keys")
    op.drop_table("embedding_api_keys")
    op.drop_table("embedding_accounts")
