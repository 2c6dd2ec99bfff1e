"""Bring-your-own-key providers: an account registers (or replaces) its one embedding provider, reads it back
without its key, removes it; an operator re-encrypts every stored key under the newest encryption key."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace

from domain.api_keys import new_id
from domain.errors import InvalidInput, ProviderNotFound
from domain.model import Provider, ProviderConfig
from domain.ports import ProviderStore, RemoteEmbedder, SecretBox
from domain.use_cases.keys import utc_now

log = logging.getLogger(__name__)

MAX_NAME_CHARS = 100
MIN_KEY_CHARS = 12  # shorter, its last 4 characters (what GET shows) would give away too much of it
MAX_KEY_CHARS = 4096


class SetProvider:
    """Check the provider (endpoint rules, template, response path: a refusal names its rule), encrypt its key,
    store it in place of the account's previous one."""

    def __init__(self, store: ProviderStore, box: SecretBox, remote: RemoteEmbedder) -> None:
        self._store = store
        self._box = box
        self._remote = remote

    async def execute(self, account_id: str, config: ProviderConfig, api_key: str) -> Provider:
        name = config.name.strip()
        if not 1 <= len(name) <= MAX_NAME_CHARS or not name.isprintable():
            raise InvalidInput(f"name must hold 1 to {MAX_NAME_CHARS} printable characters.")
        if not MIN_KEY_CHARS <= len(api_key) <= MAX_KEY_CHARS or not all(33 <= ord(c) <= 126 for c in api_key):
            raise InvalidInput(  # never echoed
                f"api_key must be {MIN_KEY_CHARS} to {MAX_KEY_CHARS} ASCII characters without spaces (it is sent "
                "as an HTTP header)."
            )
        config = await self._remote.check(replace(config, name=name))
        provider = Provider(
            id=new_id("prov"),
            account_id=account_id,
            config=config,
            encrypted_key=self._box.encrypt(api_key),
            key_last4=api_key[-4:],
            created_at=utc_now(),
        )
        await asyncio.to_thread(self._store.put, provider)
        log.info("account %s set provider %s (%s)", account_id, provider.id, config.host)
        return provider


class GetProvider:
    """The account's provider, its key only as its last 4 characters (ProviderNotFound when it has none)."""

    def __init__(self, store: ProviderStore) -> None:
        self._store = store

    async def execute(self, account_id: str) -> Provider:
        provider = await asyncio.to_thread(self._store.get, account_id)
        if provider is None:
            raise ProviderNotFound()
        return provider


class DeleteProvider:
    def __init__(self, store: ProviderStore) -> None:
        self._store = store

    async def execute(self, account_id: str) -> None:
        if not await asyncio.to_thread(self._store.delete, account_id):
            raise ProviderNotFound()
        log.info("account %s removed its provider", account_id)


@dataclass(frozen=True)
class RotationReport:
    providers: int


class RotateProviderKeys:
    """Re-encrypt every stored provider key under the first encryption key (after a new one was put first in
    ENCRYPTION_KEY); the older keys can then be removed. All keys are written in one transaction."""

    def __init__(self, store: ProviderStore, box: SecretBox) -> None:
        self._store = store
        self._box = box

    def execute(self) -> RotationReport:
        rotated = {provider.id: self._box.rotate(provider.encrypted_key) for provider in self._store.all()}
        written = self._store.replace_keys(rotated)
        log.info("re-encrypted %d provider keys under the first encryption key", written)
        return RotationReport(providers=written)
