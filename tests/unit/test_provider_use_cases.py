"""Bring-your-own-key providers in the domain: registering checks the provider first and stores its key only
encrypted, one per account; rotation re-encrypts every key under the first encryption key; the routing of a
free-tier account's texts to its provider, cached under the provider's identity."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest
from cryptography.fernet import Fernet

from adapters.fake_embedder import FakeEmbedderLoader
from adapters.memory_accounts import InMemoryProviderStore
from adapters.memory_cache import InMemoryEmbeddingCache
from adapters.resilience import FailSafeCache
from adapters.secrets import FernetSecretBox
from domain.errors import ByokRequired, EndpointRefused, InvalidInput, ProviderNotFound, ProviderUnavailable
from domain.model import KNOWN_MODELS, Caller, Limits, ProviderConfig, TextItem, Tier, TokenIds, Vectors
from domain.services import ModelHost
from domain.use_cases import DeleteProvider, EmbedBatch, GetProvider, RotateProviderKeys, SetProvider
from domain.use_cases.embedding import ByokRouting
from tests.support import domain_test_scheduler, pool_of

OLD, NEW = Fernet.generate_key().decode(), Fernet.generate_key().decode()
KEY = "sk-test-0123456789abcdefWXYZ"
CONFIG = ProviderConfig(
    name="openai",
    endpoint="https://api.openai.com/v1/embeddings",
    request_template='{"model": "text-embedding-3-small", "input": $TEXTS}',
    response_path="$.data[*].embedding",
)
FREE = Caller(account_id="usr_1", key_id="key_1", tier=Tier.FREE, tenant="usr_1")
PAID = Caller(account_id="usr_2", key_id="key_2", tier=Tier.PAID, tenant="usr_2")


class FakeRemote:
    """A provider answering each text with a fixed 3-dimensional vector; records its calls and the keys used."""

    def __init__(self, refuse: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.keys: list[str] = []
        self.refuse = refuse

    async def embed(self, config: ProviderConfig, api_key: str, texts: Sequence[str]) -> Vectors:
        self.calls.append(list(texts))
        self.keys.append(api_key)
        rows = np.asarray([[len(t), 1.0, 2.0] for t in texts], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def identity(self, config: ProviderConfig) -> str:
        return f"{config.host}/text-embedding-3-small"

    async def check(self, config: ProviderConfig) -> ProviderConfig:
        if self.refuse:
            raise EndpointRefused(self.refuse, "refused by the test")
        return config


def test_a_provider_is_checked_then_stored_with_its_key_encrypted_and_only_its_last4_shown() -> None:
    store, box = InMemoryProviderStore(), FernetSecretBox(OLD)
    provider = asyncio.run(SetProvider(store, box, FakeRemote()).execute("usr_1", CONFIG, KEY))
    assert provider.id.startswith("prov_") and provider.key_last4 == "WXYZ"
    assert KEY.encode() not in provider.encrypted_key and box.decrypt(provider.encrypted_key) == KEY
    assert asyncio.run(GetProvider(store).execute("usr_1")) == provider
    replaced = asyncio.run(SetProvider(store, box, FakeRemote()).execute("usr_1", CONFIG, KEY + "2"))
    assert store.all() == [replaced]
    asyncio.run(DeleteProvider(store).execute("usr_1"))
    with pytest.raises(ProviderNotFound):
        asyncio.run(GetProvider(store).execute("usr_1"))
    with pytest.raises(ProviderNotFound):
        asyncio.run(DeleteProvider(store).execute("usr_1"))


def test_a_refused_endpoint_or_a_bad_key_stores_nothing_and_never_echoes_the_key() -> None:
    store, box = InMemoryProviderStore(), FernetSecretBox(OLD)
    with pytest.raises(EndpointRefused, match="host_not_allowed"):
        asyncio.run(SetProvider(store, box, FakeRemote(refuse="host_not_allowed")).execute("usr_1", CONFIG, KEY))
    for bad in ("", "   ", "sk-with\nnewline-0123", "x" * 5000, "sk-ключ-0123456789", "sk-with space-0123", "sk9Z"):
        with pytest.raises(InvalidInput) as refused:
            asyncio.run(SetProvider(store, box, FakeRemote()).execute("usr_1", CONFIG, bad))
        assert bad.strip() == "" or bad not in refused.value.message
    assert store.all() == []


def test_rotation_re_encrypts_every_key_under_the_first_so_the_old_one_can_go() -> None:
    store = InMemoryProviderStore()
    for n in (1, 2):
        asyncio.run(SetProvider(store, FernetSecretBox(OLD), FakeRemote()).execute(f"usr_{n}", CONFIG, f"{KEY}{n}"))
    report = RotateProviderKeys(store, FernetSecretBox(f"{NEW},{OLD}")).execute()
    assert report.providers == 2
    only_new = FernetSecretBox(NEW)
    assert sorted(only_new.decrypt(p.encrypted_key) for p in store.all()) == [f"{KEY}1", f"{KEY}2"]
    with pytest.raises(ValueError, match="cannot be decrypted"):
        FernetSecretBox(OLD).decrypt(store.all()[0].encrypted_key)


def build(free_tier_compute: str = "byok") -> tuple[EmbedBatch, FakeRemote, InMemoryProviderStore, ModelHost]:
    store, remote = InMemoryProviderStore(), FakeRemote()
    host = ModelHost(FakeEmbedderLoader(KNOWN_MODELS["all-MiniLM-L6-v2"]))
    cache = FailSafeCache(InMemoryEmbeddingCache(max_entries=100), shared_pool=True)
    byok = ByokRouting(store, FernetSecretBox(OLD), remote, free_tier_compute)
    limits = Limits(max_input_length=100, max_batch_size=10)
    return EmbedBatch(pool_of(host, domain_test_scheduler()), limits, cache, byok=byok), remote, store, host


def embed(use_case: EmbedBatch, host: ModelHost, caller: Caller, *texts: str) -> tuple[list[bool], str, int]:
    async def scenario() -> tuple[list[bool], str, int]:
        await host.start()
        result = await use_case.execute([TextItem(id=None, text=t) for t in texts], caller=caller)
        return [item.cached for item in result.items], result.served_by, result.dimensions

    return asyncio.run(scenario())


def test_free_accounts_compute_on_their_provider_cached_apart_and_paid_ones_locally() -> None:
    use_case, remote, store, host = build()
    with pytest.raises(ByokRequired, match="POST /v1/provider"):
        embed(use_case, host, FREE, "a text")
    asyncio.run(SetProvider(store, FernetSecretBox(OLD), remote).execute("usr_1", CONFIG, KEY))
    assert embed(use_case, host, FREE, "a text", "b", "a text") == ([False, False, False], "provider", 3)
    assert remote.calls == [["a text", "b"]] and remote.keys == [KEY]  # each distinct text once, the decrypted key
    assert embed(use_case, host, FREE, "b", "a text") == ([True, True], "cache", 3)
    assert len(remote.calls) == 1
    local = embed(use_case, host, PAID, "a text")
    assert local[1:] == ("local", 384) and len(remote.calls) == 1  # the provider's entries are not the model's
    with pytest.raises(InvalidInput, match="token ids"):
        asyncio.run(use_case.execute([TextItem(id=None, text=TokenIds((1, 2)))], caller=FREE))


def test_an_operator_may_serve_the_free_tier_locally() -> None:
    use_case, remote, _, host = build(free_tier_compute="local")
    assert embed(use_case, host, FREE, "a text")[1:] == ("local", 384)
    assert remote.calls == []


def test_texts_go_to_the_provider_in_request_order_each_once() -> None:
    use_case, remote, store, host = build()
    asyncio.run(SetProvider(store, FernetSecretBox(OLD), remote).execute("usr_1", CONFIG, KEY))
    embed(use_case, host, FREE, "c", "a", "c", "b")
    assert remote.calls == [["c", "a", "b"]]


def test_a_key_encrypted_under_a_dropped_encryption_key_is_a_clear_provider_error() -> None:
    use_case, remote, store, host = build()
    asyncio.run(SetProvider(store, FernetSecretBox(NEW), remote).execute("usr_1", CONFIG, KEY))  # not OLD: lost
    with pytest.raises(ProviderUnavailable, match="cannot be decrypted") as failed:
        embed(use_case, host, FREE, "a text")
    assert KEY not in failed.value.message and remote.calls == []


def test_no_repr_of_a_stored_provider_or_an_outbound_call_holds_its_key() -> None:
    from adapters.providers import _Call

    store, box = InMemoryProviderStore(), FernetSecretBox(OLD)
    provider = asyncio.run(SetProvider(store, box, FakeRemote()).execute("usr_1", CONFIG, KEY))
    assert provider.encrypted_key.decode() not in repr(provider)
    call = _Call(CONFIG, ("api.openai.com", "m"), {"Authorization": f"Bearer {KEY}"}, None, True)
    assert KEY not in repr(call)
