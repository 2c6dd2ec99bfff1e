"""API key use cases: who is calling (an account's key or a static key from the settings), and an account's keys:
create, list, revoke."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime

from domain.api_keys import display_prefix, key_digest, looks_like_account_key, new_api_key, new_id, well_formed
from domain.errors import KeyNotFound, Unauthenticated
from domain.model import Account, ApiKey, Caller
from domain.ports import ApiKeyStore, UsageRecorder

ANONYMOUS = Caller(tenant="anonymous")


def utc_now() -> datetime:
    return datetime.now(UTC)


class AuthenticateCaller:
    """Find who presented an API key. A key shaped like an account key (`vec_`, 36 characters) is checked against
    its checksum first (a malformed one is refused without a lookup), then found by its SHA-256; a revoked key is
    refused. Any other key is compared with every static key, each in constant time. With neither accounts nor
    static keys configured (ALLOW_UNAUTHENTICATED) every caller is the `anonymous` tenant."""

    def __init__(
        self,
        keys_by_tenant: Mapping[str, str],
        accounts: ApiKeyStore | None = None,
        activity: UsageRecorder | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._keys = [(tenant, key.encode()) for tenant, key in keys_by_tenant.items() if key]
        self._accounts = accounts
        self._activity = activity
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return bool(self._keys) or self._accounts is not None

    async def execute(self, presented: str | None) -> Caller:
        if not self.enabled:
            return ANONYMOUS
        presented = presented or ""
        if self._accounts is not None and looks_like_account_key(presented):
            return await self._account_caller(presented)
        candidate = presented.encode()
        matched: str | None = None
        for tenant, key in self._keys:
            if hmac.compare_digest(candidate, key) and matched is None:
                matched = tenant
        if matched is None:
            raise Unauthenticated()
        return Caller(tenant=matched)

    async def _account_caller(self, presented: str) -> Caller:
        assert self._accounts is not None
        if not well_formed(presented):
            raise Unauthenticated()
        found = await asyncio.to_thread(self._accounts.find, key_digest(presented))
        if found is None:
            raise Unauthenticated()
        key, account = found
        if key.revoked_at is not None:
            raise Unauthenticated("this API key was revoked; create a new one with POST /v1/keys.")
        if self._activity is not None:
            self._activity.touch(key.id, self._clock())
        return Caller(account_id=account.id, key_id=key.id, tier=account.tier, tenant=account.id)


def new_key_record(account_id: str, now: datetime) -> tuple[str, ApiKey]:
    """A fresh key (shown once) and what is stored of it."""
    key = new_api_key()
    return key, ApiKey(
        id=new_id("key"), account_id=account_id, prefix=display_prefix(key), digest=key_digest(key), created_at=now
    )


class CreateKey:
    """Give an account one more API key; the key is returned once and only its digest kept."""

    def __init__(self, keys: ApiKeyStore, clock: Callable[[], datetime] = utc_now) -> None:
        self._keys = keys
        self._clock = clock

    async def execute(self, account: Account) -> tuple[str, ApiKey]:
        key, record = new_key_record(account.id, self._clock())
        await asyncio.to_thread(self._keys.add, record)
        return key, record


class ListKeys:
    """An account's keys (prefix and dates, never a key), with uses not yet written to the database."""

    def __init__(self, keys: ApiKeyStore, activity: UsageRecorder | None = None) -> None:
        self._keys = keys
        self._activity = activity

    async def execute(self, account: Account) -> list[ApiKey]:
        stored = await asyncio.to_thread(self._keys.list, account.id)
        if self._activity is None:
            return stored
        out = []
        for key in stored:
            buffered = self._activity.last_used(key.id)
            if buffered is not None and (key.last_used_at is None or buffered > key.last_used_at):
                key = replace(key, last_used_at=buffered)
            out.append(key)
        return out


class RevokeKey:
    """Revoke one of the account's keys by its prefix: every process refuses it from the next request on (keys are
    looked up on each request, not cached)."""

    def __init__(self, keys: ApiKeyStore, clock: Callable[[], datetime] = utc_now) -> None:
        self._keys = keys
        self._clock = clock

    async def execute(self, account: Account, prefix: str) -> None:
        if not (prefix.isascii() and prefix.isprintable()):  # no key's prefix is: no lookup
            raise KeyNotFound()
        if not await asyncio.to_thread(self._keys.revoke, account.id, prefix, self._clock()):
            raise KeyNotFound()
