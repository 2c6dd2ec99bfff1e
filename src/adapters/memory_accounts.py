"""Accounts, API keys and usage in this process: the tests' fakes, and a store that needs no database (gone on
restart). Same behaviour as the SQL stores, one lock for all three."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import date, datetime

from domain.errors import EmailTaken, UnknownAccount
from domain.model import Account, ApiKey, Provider, Tier, UsageRecord


class InMemoryAccounts:
    """The shared state of the in-memory stores."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accounts: dict[str, Account] = {}
        self.keys: dict[bytes, ApiKey] = {}
        self.usage: dict[tuple[str, date, str], UsageRecord] = {}


class InMemoryAccountStore:
    def __init__(self, state: InMemoryAccounts) -> None:
        self._s = state

    def add(self, account: Account, first_key: ApiKey) -> None:
        with self._s.lock:
            if any(a.email == account.email for a in self._s.accounts.values()):
                raise EmailTaken()
            self._s.accounts[account.id] = account
            self._s.keys[first_key.digest] = first_key

    def by_email(self, email: str) -> Account | None:
        with self._s.lock:
            return next((a for a in self._s.accounts.values() if a.email == email), None)

    def by_id(self, account_id: str) -> Account | None:
        with self._s.lock:
            return self._s.accounts.get(account_id)

    def set_tier(self, email: str, tier: Tier) -> Account:
        with self._s.lock:
            account = next((a for a in self._s.accounts.values() if a.email == email), None)
            if account is None:
                raise UnknownAccount(email)
            account = self._s.accounts[account.id] = replace(account, tier=tier)
            return account

    def list(self) -> list[Account]:
        with self._s.lock:
            return sorted(self._s.accounts.values(), key=lambda a: (a.created_at, a.id))


class InMemoryApiKeyStore:
    def __init__(self, state: InMemoryAccounts) -> None:
        self._s = state

    def add(self, key: ApiKey) -> None:
        with self._s.lock:
            self._s.keys[key.digest] = key

    def find(self, digest: bytes) -> tuple[ApiKey, Account] | None:
        with self._s.lock:
            key = self._s.keys.get(digest)
            return (key, self._s.accounts[key.account_id]) if key is not None else None

    def list(self, account_id: str) -> list[ApiKey]:
        with self._s.lock:
            return sorted((k for k in self._s.keys.values() if k.account_id == account_id), key=lambda k: k.created_at)

    def revoke(self, account_id: str, prefix: str, at: datetime) -> bool:
        with self._s.lock:
            for digest, key in self._s.keys.items():
                if key.account_id == account_id and key.prefix == prefix:
                    if key.revoked_at is None:
                        self._s.keys[digest] = replace(key, revoked_at=at)
                    return True
            return False

    def touch(self, last_used: Mapping[str, datetime]) -> None:
        with self._s.lock:
            for digest, key in self._s.keys.items():
                at = last_used.get(key.id)
                if at is not None and (key.last_used_at is None or key.last_used_at < at):
                    self._s.keys[digest] = replace(key, last_used_at=at)


class InMemoryUsageLedger:
    def __init__(self, state: InMemoryAccounts) -> None:
        self._s = state

    def add(self, records: Sequence[UsageRecord]) -> None:
        with self._s.lock:
            for record in records:
                slot = (record.account_id, record.day, record.model)
                held = self._s.usage.get(slot)
                self._s.usage[slot] = held.plus(record) if held is not None else record

    def read(self, account_id: str, since: date) -> list[UsageRecord]:
        with self._s.lock:
            return [r for (owner, day, _), r in self._s.usage.items() if owner == account_id and day >= since]


class InMemoryProviderStore:
    """Each account's one provider, in the process (unit tests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_account: dict[str, Provider] = {}

    def get(self, account_id: str) -> Provider | None:
        with self._lock:
            return self._by_account.get(account_id)

    def put(self, provider: Provider) -> None:
        with self._lock:
            self._by_account[provider.account_id] = provider

    def delete(self, account_id: str) -> bool:
        with self._lock:
            return self._by_account.pop(account_id, None) is not None

    def all(self) -> list[Provider]:
        with self._lock:
            return list(self._by_account.values())

    def replace_keys(self, keys: Mapping[str, bytes]) -> int:
        with self._lock:
            written = 0
            for account, provider in list(self._by_account.items()):
                if provider.id in keys:
                    self._by_account[account] = replace(provider, encrypted_key=keys[provider.id])
                    written += 1
            return written
