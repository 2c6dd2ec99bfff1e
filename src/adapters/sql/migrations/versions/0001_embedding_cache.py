"""Embedding cache: entries (float32 vectors by tenant, model, variant, text key; hit counts) and per-tenant counters.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "embedding_cache_entries",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("variant", sa.String(100), nullable=False),
        sa.Column("text_key", sa.LargeBinary(32), nullable=False),
        sa.Column("dimensions", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("hits", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("last_hit_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("length(vector) = 4 * dimensions", name="ck_embedding_cache_entries_float32"),
        sa.PrimaryKeyConstraint("tenant", "model", "variant", "text_key"),
    )
    op.create_table(
        "embedding_cache_counters",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("hits", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("misses", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("tenant"),
    )


def downgrade() -> None:
    op.drop_table("embedding_cache_counters")
    op.drop_table("embedding_cache_entries")
