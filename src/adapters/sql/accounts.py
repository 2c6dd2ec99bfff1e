"""Accounts, API keys and the usage ledger in the service's SQL database. Each method is one transaction (the
database's unit of work); an account and its first key are written together. A database failure is logged in one
line (never a statement or its parameters) and raised as AccountsUnavailable."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, or_, select, update
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from adapters.resilience import OutageLog
from adapters.sql.database import SqlDatabase
from adapters.sql.tables import accounts, api_keys, providers, usage
from adapters.sql_deadlines import DeadlineExceeded
from domain.errors import AccountsUnavailable, EmailTaken, InvalidInput, UnknownAccount
from domain.model import Account, ApiKey, Provider, ProviderConfig, Tier, UsageRecord

log = logging.getLogger(__name__)


class _SqlStore:
    """`outage`: shared by the stores of one database, so an outage is one warning, not one per store."""

    def __init__(self, database: SqlDatabase, outage: OutageLog | None = None) -> None:
        self._db = database
        self._outage = outage or OutageLog("account database")

    @contextmanager
    def _transaction(self, what: str, *, read_only: bool = False, from_caller: bool = True) -> Iterator[Connection]:
        """`from_caller`: the values come from a request; one the database cannot hold (PostgreSQL: a NUL in text)
        is then the caller's mistake (400), not an outage."""
        started = time.monotonic()
        try:
            with self._db.read() if read_only else self._db.unit_of_work() as connection:
                yield connection
        except (EmailTaken, UnknownAccount):
            raise
        except DataError as exc:
            if not from_caller:
                self._outage.failed(what, exc, started)
                raise
            raise InvalidInput("a value in the request cannot be stored (it holds a NUL character?).") from exc
        except (SQLAlchemyError, DeadlineExceeded, OSError) as exc:
            self._outage.failed(what, exc, started)
            raise AccountsUnavailable() from exc
        self._outage.answered()


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def _account(row: Row[Any] | Mapping[Any, Any]) -> Account:
    m = row._mapping if isinstance(row, Row) else row
    return Account(
        id=m["id"],
        email=m["email"],
        password_hash=m["password_hash"],
        tier=Tier(m["tier"]),
        created_at=_aware(m["created_at"]) or m["created_at"],
    )


def _key(m: Mapping[Any, Any]) -> ApiKey:
    return ApiKey(
        id=m["id"],
        account_id=m["account_id"],
        prefix=m["prefix"],
        digest=bytes(m["digest"]),
        created_at=_aware(m["created_at"]) or m["created_at"],
        last_used_at=_aware(m["last_used_at"]),
        revoked_at=_aware(m["revoked_at"]),
    )


def _key_row(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "account_id": key.account_id,
        "prefix": key.prefix,
        "digest": key.digest,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "revoked_at": key.revoked_at,
    }


class SqlAccountStore(_SqlStore):
    def add(self, account: Account, first_key: ApiKey) -> None:
        with self._transaction("signup") as connection:
            taken = connection.execute(select(accounts.c.id).where(accounts.c.email == account.email)).first()
            if taken is not None:
                raise EmailTaken()
            try:
                connection.execute(
                    accounts.insert().values(
                        id=account.id,
                        email=account.email,
                        password_hash=account.password_hash,
                        tier=account.tier.value,
                        created_at=account.created_at,
                    )
                )
            except IntegrityError as exc:  # another signup with this email committed in between
                raise EmailTaken() from exc
            connection.execute(api_keys.insert().values(**_key_row(first_key)))

    def by_email(self, email: str) -> Account | None:
        return self._one("login", accounts.c.email == email)

    def by_id(self, account_id: str) -> Account | None:
        return self._one("account lookup", accounts.c.id == account_id)

    def _one(self, what: str, condition: Any) -> Account | None:
        with self._transaction(what, read_only=True) as connection:
            row = connection.execute(select(accounts).where(condition)).first()
        return _account(row) if row is not None else None

    def set_tier(self, email: str, tier: Tier) -> Account:
        with self._transaction("tier change") as connection:
            done = connection.execute(update(accounts).where(accounts.c.email == email).values(tier=tier.value))
            if done.rowcount == 0:
                raise UnknownAccount(email)
            row = connection.execute(select(accounts).where(accounts.c.email == email)).one()
        return _account(row)

    def list(self) -> list[Account]:
        with self._transaction("account listing") as connection:
            rows = connection.execute(select(accounts).order_by(accounts.c.created_at, accounts.c.id)).all()
        return [_account(row) for row in rows]


FIND_KEY = (
    select(
        api_keys,
        accounts.c.email,
        accounts.c.password_hash,
        accounts.c.tier,
        accounts.c.created_at.label("account_created_at"),
    )
    .select_from(api_keys.join(accounts, api_keys.c.account_id == accounts.c.id))
    .where(api_keys.c.digest == bindparam("digest"))
)  # built once: every authenticated request runs it


class SqlApiKeyStore(_SqlStore):
    def add(self, key: ApiKey) -> None:
        with self._transaction("key creation") as connection:
            connection.execute(api_keys.insert().values(**_key_row(key)))

    def find(self, digest: bytes) -> tuple[ApiKey, Account] | None:
        with self._transaction("key lookup", read_only=True) as connection:
            row = connection.execute(FIND_KEY, {"digest": digest}).first()
        if row is None:
            return None
        m = row._mapping
        account = _account(
            {
                "id": m["account_id"],
                "email": m["email"],
                "password_hash": m["password_hash"],
                "tier": m["tier"],
                "created_at": m["account_created_at"],
            }
        )
        return _key(m), account

    def list(self, account_id: str) -> list[ApiKey]:
        with self._transaction("key listing") as connection:
            rows = connection.execute(
                select(api_keys).where(api_keys.c.account_id == account_id).order_by(api_keys.c.created_at)
            ).all()
        return [_key(row._mapping) for row in rows]

    def revoke(self, account_id: str, prefix: str, at: datetime) -> bool:
        with self._transaction("key revocation") as connection:
            row = connection.execute(
                select(api_keys.c.id, api_keys.c.revoked_at).where(
                    api_keys.c.account_id == account_id, api_keys.c.prefix == prefix
                )
            ).first()
            if row is None:
                return False
            if row.revoked_at is None:
                connection.execute(update(api_keys).where(api_keys.c.id == row.id).values(revoked_at=at))
        return True

    def touch(self, last_used: Mapping[str, datetime]) -> None:
        if not last_used:
            return
        statement = (
            update(api_keys)
            .where(
                api_keys.c.id == bindparam("key_id"),
                or_(api_keys.c.last_used_at.is_(None), api_keys.c.last_used_at < bindparam("used_at")),
            )
            .values(last_used_at=bindparam("used_at"))
        )  # never back in time: another process may have written a later use
        rows = [{"key_id": key_id, "used_at": at} for key_id, at in sorted(last_used.items())]
        with self._transaction("key activity", from_caller=False) as connection:
            connection.execute(statement, rows)


class SqlUsageLedger(_SqlStore):
    COUNTS = ("requests", "texts", "tokens", "cache_hits", "cache_misses", "compute_ms")

    def add(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        rows = [
            {
                "account_id": r.account_id,
                "day": r.day,
                "model": r.model,
                "requests": r.requests,
                "texts": r.texts,
                "tokens": r.tokens,
                "cache_hits": r.cache_hits,
                "cache_misses": r.cache_misses,
                "compute_ms": r.compute_ms,
            }
            for r in sorted(records, key=lambda r: (r.account_id, r.day, r.model))  # one lock order: no deadlocks
        ]
        upsert = self._db.insert(usage)
        statement = upsert.on_conflict_do_update(
            index_elements=[usage.c.account_id, usage.c.day, usage.c.model],
            set_={name: usage.c[name] + upsert.excluded[name] for name in self.COUNTS},
        )
        with self._transaction("usage write", from_caller=False) as connection:
            connection.execute(statement, rows)

    def read(self, account_id: str, since: date) -> list[UsageRecord]:
        with self._transaction("usage read", read_only=True) as connection:
            rows = connection.execute(select(usage).where(usage.c.account_id == account_id, usage.c.day >= since)).all()
        return [
            UsageRecord(
                account_id=m["account_id"],
                day=m["day"],
                model=m["model"],
                requests=int(m["requests"]),
                texts=int(m["texts"]),
                tokens=int(m["tokens"]),
                cache_hits=int(m["cache_hits"]),
                cache_misses=int(m["cache_misses"]),
                compute_ms=float(m["compute_ms"]),
            )
            for m in (row._mapping for row in rows)
        ]


def _provider(m: Mapping[Any, Any]) -> Provider:
    return Provider(
        id=m["id"],
        account_id=m["account_id"],
        config=ProviderConfig(
            name=m["name"],
            endpoint=m["endpoint"],
            request_template=m["request_template"],
            response_path=m["response_path"],
        ),
        encrypted_key=bytes(m["encrypted_key"]),
        key_last4=m["key_last4"],
        created_at=_aware(m["created_at"]) or m["created_at"],
    )


class SqlProviderStore(_SqlStore):
    """Each account's one provider: a row keyed by the account, replaced whole by a second POST."""

    def get(self, account_id: str) -> Provider | None:
        with self._transaction("provider lookup", read_only=True) as connection:
            row = connection.execute(select(providers).where(providers.c.account_id == account_id)).first()
        return _provider(row._mapping) if row is not None else None

    def put(self, provider: Provider) -> None:
        values = {
            "account_id": provider.account_id,
            "id": provider.id,
            "name": provider.config.name,
            "endpoint": provider.config.endpoint,
            "request_template": provider.config.request_template,
            "response_path": provider.config.response_path,
            "encrypted_key": provider.encrypted_key,
            "key_last4": provider.key_last4,
            "created_at": provider.created_at,
        }
        with self._transaction("provider update") as connection:
            # two POSTs of one account at once: the second waits for the first (PostgreSQL; SQLite writes one at a
            # time), then replaces it, instead of both deleting and one insert failing
            connection.execute(select(accounts.c.id).where(accounts.c.id == provider.account_id).with_for_update())
            connection.execute(providers.delete().where(providers.c.account_id == provider.account_id))
            connection.execute(providers.insert().values(**values))

    def delete(self, account_id: str) -> bool:
        with self._transaction("provider removal") as connection:
            return connection.execute(providers.delete().where(providers.c.account_id == account_id)).rowcount > 0

    def all(self) -> list[Provider]:
        with self._transaction("provider listing", read_only=True, from_caller=False) as connection:
            return [_provider(row._mapping) for row in connection.execute(select(providers))]

    def replace_keys(self, keys: Mapping[str, bytes]) -> int:
        if not keys:
            return 0
        statement = (
            update(providers).where(providers.c.id == bindparam("provider_id")).values(encrypted_key=bindparam("key"))
        )
        with self._transaction("provider key rotation", from_caller=False) as connection:
            connection.execute(statement, [{"provider_id": pid, "key": key} for pid, key in keys.items()])
            stored = connection.execute(select(providers.c.id).where(providers.c.id.in_(list(keys)))).all()
        return len(stored)  # (an executemany's rowcount is not reliable on every driver)
