"""Alembic environment of the service's database (cache, accounts, keys, usage): runs on the connection the service
hands over (start-up, or `embedding-service cache migrate`), or on DATABASE_URL (else CACHE_URL) when Alembic's own
command line writes a new revision."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection, create_engine

from adapters.sql.database import VERSION_TABLE, psycopg_url
from adapters.sql.tables import metadata


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if given is not None:
    run(given)
else:
    engine = create_engine(
        psycopg_url(
            os.environ.get("DATABASE_URL") or os.environ.get("CACHE_URL") or "sqlite:///data/embedding-cache.sqlite3"
        )
    )
    with engine.begin() as connection:
        run(connection)
