"""One contract for the account, key and usage stores: in memory, SQLite and PostgreSQL behave alike."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.memory_accounts import InMemoryAccounts, InMemoryAccountStore, InMemoryApiKeyStore, InMemoryUsageLedger
from domain.errors import AccountsUnavailable, EmailTaken, UnknownAccount
from domain.model import Account, ApiKey, Provider, ProviderConfig, Tier, UsageRecord
from tests.support import postgres_database

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any, Any]]:
    if request.param == "memory":
        state = InMemoryAccounts()
        yield InMemoryAccountStore(state), InMemoryApiKeyStore(state), InMemoryUsageLedger(state)
        return
    from adapters.sql.accounts import SqlAccountStore, SqlApiKeyStore, SqlUsageLedger
    from adapters.sql.database import PostgresDatabase, SqliteDatabase

    with postgres_database() as url:
        database = SqliteDatabase(tmp_path / "db.sqlite3") if request.param == "sqlite" else PostgresDatabase(url)
        database.prepare()
        yield SqlAccountStore(database), SqlApiKeyStore(database), SqlUsageLedger(database)
        database.close()


def account(n: int = 1, email: str = "ada@example.com") -> Account:
    return Account(id=f"usr_{n}", email=email, password_hash="$2b$04$hash", tier=Tier.FREE, created_at=NOW)


def key(n: int = 1, account_id: str = "usr_1") -> ApiKey:
    return ApiKey(
        id=f"key_{n}", account_id=account_id, prefix=f"vec_prefix{n:02d}", digest=bytes([n]) * 32, created_at=NOW
    )


def test_an_account_and_its_first_key_are_stored_together(stores: tuple[Any, Any, Any]) -> None:
    accounts, keys, _ = stores
    accounts.add(account(), key())
    found = keys.find(bytes([1]) * 32)
    assert found is not None
    stored_key, owner = found
    assert (stored_key.id, stored_key.prefix, owner.id, owner.tier) == ("key_1", "vec_prefix01", "usr_1", Tier.FREE)
    assert stored_key.created_at == NOW and owner.created_at == NOW  # UTC, aware, on every store
    with pytest.raises(EmailTaken):
        accounts.add(account(2), key(2, "usr_2"))
    assert keys.find(bytes([2]) * 32) is None  # nothing of the refused signup stayed
    assert accounts.by_email("ada@example.com") == accounts.by_id("usr_1") == owner


@pytest.mark.parametrize("stores", ["sqlite", "postgres"], indirect=True)
def test_a_signup_whose_key_cannot_be_stored_leaves_no_account(stores: tuple[Any, Any, Any]) -> None:
    """The account and its first key are one unit of work: the key's insert fails (its prefix is taken), so the
    account inserted just before it is rolled back."""
    accounts, keys, _ = stores
    accounts.add(account(), key())
    colliding = replace(key(2, "usr_2"), prefix=key().prefix)
    with pytest.raises(AccountsUnavailable):
        accounts.add(account(2, "grace@example.com"), colliding)
    assert accounts.by_email("grace@example.com") is None and accounts.by_id("usr_2") is None
    assert [a.id for a in accounts.list()] == ["usr_1"]
    assert keys.find(colliding.digest) is None and keys.list("usr_2") == []
    accounts.add(account(2, "grace@example.com"), key(2, "usr_2"))  # the email is free: the signup can be retried
    assert accounts.by_email("grace@example.com") == accounts.by_id("usr_2")


def test_tiers_change_and_unknown_accounts_are_named(stores: tuple[Any, Any, Any]) -> None:
    accounts, _, _ = stores
    accounts.add(account(), key())
    assert accounts.set_tier("ada@example.com", Tier.PAID).tier is Tier.PAID
    assert [a.tier for a in accounts.list()] == [Tier.PAID]
    with pytest.raises(UnknownAccount):
        accounts.set_tier("nobody@example.com", Tier.PAID)


def test_keys_are_revoked_by_their_owner_only_and_last_use_never_goes_back(stores: tuple[Any, Any, Any]) -> None:
    accounts, keys, _ = stores
    accounts.add(account(), key())
    accounts.add(account(2, "grace@example.com"), key(2, "usr_2"))
    assert keys.revoke("usr_2", "vec_prefix01", NOW) is False
    assert keys.revoke("usr_1", "vec_prefix01", NOW) is True
    assert keys.revoke("usr_1", "vec_prefix01", NOW + timedelta(hours=1)) is True  # again: still the first time
    assert [k.revoked_at for k in keys.list("usr_1")] == [NOW]
    keys.touch({"key_2": NOW + timedelta(minutes=5)})
    keys.touch({"key_2": NOW + timedelta(minutes=1)})  # an older use, written late by another process
    assert [k.last_used_at for k in keys.list("usr_2")] == [NOW + timedelta(minutes=5)]


def test_usage_adds_up_per_account_day_and_model(stores: tuple[Any, Any, Any]) -> None:
    accounts, _, usage = stores
    accounts.add(account(), key())
    today, yesterday = NOW.date(), NOW.date() - timedelta(days=1)
    one = UsageRecord("usr_1", today, "m", requests=1, texts=3, tokens=30, cache_hits=1, cache_misses=2, compute_ms=4.5)
    usage.add([one, UsageRecord("usr_1", yesterday, "m", requests=7)])
    usage.add([one])
    rows = sorted(usage.read("usr_1", yesterday), key=lambda r: r.day)
    assert rows == [UsageRecord("usr_1", yesterday, "m", requests=7), one.plus(one)]
    assert usage.read("usr_1", today) == [one.plus(one)]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def with_providers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """An account store and the provider store beside it."""
    if request.param == "memory":
        from adapters.memory_accounts import InMemoryProviderStore

        yield InMemoryAccountStore(InMemoryAccounts()), InMemoryProviderStore()
        return
    from adapters.sql.accounts import SqlAccountStore, SqlProviderStore
    from adapters.sql.database import PostgresDatabase, SqliteDatabase

    with postgres_database() as url:
        database = SqliteDatabase(tmp_path / "db.sqlite3") if request.param == "sqlite" else PostgresDatabase(url)
        database.prepare()
        yield SqlAccountStore(database), SqlProviderStore(database)
        database.close()


def provider(n: int, account_id: str = "usr_1") -> Provider:
    config = ProviderConfig(
        name=f"openai-{n}",
        endpoint="https://api.openai.com/v1/embeddings",
        request_template='{"model": "text-embedding-3-small", "input": $TEXTS}',
        response_path="$.data[*].embedding",
    )
    return Provider(
        id=f"prov_{n}",
        account_id=account_id,
        config=config,
        encrypted_key=bytes([n]) * 40,
        key_last4="abcd",
        created_at=NOW,
    )


def test_each_account_has_one_provider_replaced_whole_and_removed(with_providers: tuple[Any, Any]) -> None:
    account_store, store = with_providers
    account_store.add(account(1), key(1))
    account_store.add(account(2, "grace@example.com"), key(2, "usr_2"))
    assert store.get("usr_1") is None
    store.put(provider(1))
    store.put(provider(2, "usr_2"))
    assert store.get("usr_1") == provider(1)
    store.put(provider(3))  # a second POST replaces the first
    assert store.get("usr_1") == provider(3)
    assert sorted(p.id for p in store.all()) == ["prov_2", "prov_3"]
    assert store.delete("usr_1") is True
    assert store.delete("usr_1") is False
    assert store.get("usr_1") is None and store.get("usr_2") == provider(2, "usr_2")


def test_rotated_keys_are_written_together(with_providers: tuple[Any, Any]) -> None:
    account_store, store = with_providers
    account_store.add(account(1), key(1))
    account_store.add(account(2, "grace@example.com"), key(2, "usr_2"))
    store.put(provider(1))
    store.put(provider(2, "usr_2"))
    assert store.replace_keys({"prov_1": b"new-1", "prov_2": b"new-2"}) == 2
    assert {p.id: p.encrypted_key for p in store.all()} == {"prov_1": b"new-1", "prov_2": b"new-2"}
    assert store.replace_keys({}) == 0


def test_concurrent_replacements_of_one_accounts_provider_leave_exactly_one(with_providers: tuple[Any, Any]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    account_store, store = with_providers
    account_store.add(account(1), key(1))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: store.put(provider(n)), range(1, 25)))
    assert len(store.all()) == 1 and store.get("usr_1") is not None
