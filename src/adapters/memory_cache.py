"""Embedding caches without a database: none at all (the default), and a bounded in-process LRU."""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from collections.abc import Mapping, Sequence

from adapters.vector_bytes import from_bytes, to_bytes
from domain.model import CacheScope, CacheStats, Vector


class NoEmbeddingCache:
    """CACHE_BACKEND=none: stores nothing, finds nothing, counts nothing."""

    backend = "none"

    def prepare(self) -> None:
        return None

    def get(
        self, scope: CacheScope, keys: Sequence[bytes], *, shared_pool: bool = False, count: bool = True
    ) -> dict[bytes, Vector]:
        return {}

    def put(self, scope: CacheScope, vectors: Mapping[bytes, Vector]) -> None:
        return None

    def stats(self, tenant: str) -> CacheStats:
        return CacheStats(hits=0, misses=0, entries=0)

    def close(self) -> None:
        return None


_Key = tuple[str, str, str, bytes]  # tenant, model, variant, text key


class InMemoryEmbeddingCache:
    """CACHE_BACKEND=memory: at most `max_entries` vectors in this process, least recently used evicted first; gone
    on restart. Vectors are kept as float32 bytes like the databases keep them."""

    backend = "memory"

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._entries: OrderedDict[_Key, bytes] = OrderedDict()
        self._hits_by_entry: dict[_Key, int] = defaultdict(int)
        self._entries_by_tenant: dict[str, int] = defaultdict(int)
        self._counters: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self._lock = threading.Lock()

    def prepare(self) -> None:
        return None

    def get(
        self, scope: CacheScope, keys: Sequence[bytes], *, shared_pool: bool = False, count: bool = True
    ) -> dict[bytes, Vector]:
        tenants = scope.readable_tenants(shared_pool)
        found: dict[bytes, Vector] = {}
        with self._lock:
            for key in keys:
                for tenant in tenants:
                    entry = (tenant, scope.model, scope.variant, key)
                    blob = self._entries.get(entry)
                    if blob is not None:
                        found[key] = from_bytes(blob)
                        if count:
                            self._entries.move_to_end(entry)
                            self._hits_by_entry[entry] += 1
                        break
            if count:
                counters = self._counters[scope.tenant]
                counters[0] += len(found)
                counters[1] += len(set(keys)) - len(found)
        return found

    def put(self, scope: CacheScope, vectors: Mapping[bytes, Vector]) -> None:
        blobs = {key: to_bytes(vector) for key, vector in vectors.items()}  # all converted before any is stored
        with self._lock:
            for key, blob in blobs.items():
                entry = (scope.tenant, scope.model, scope.variant, key)
                if entry in self._entries:
                    continue
                self._entries[entry] = blob
                self._entries_by_tenant[scope.tenant] += 1
            while len(self._entries) > self._max_entries:
                evicted, _ = self._entries.popitem(last=False)
                self._hits_by_entry.pop(evicted, None)
                self._entries_by_tenant[evicted[0]] -= 1

    def stats(self, tenant: str) -> CacheStats:
        with self._lock:
            hits, misses = self._counters.get(tenant, (0, 0))
            return CacheStats(hits=hits, misses=misses, entries=self._entries_by_tenant.get(tenant, 0))

    def hit_count(self, scope: CacheScope, key: bytes) -> int:
        """How often one entry was served (the databases keep this per row too)."""
        with self._lock:
            return self._hits_by_entry.get((scope.tenant, scope.model, scope.variant, key), 0)

    def close(self) -> None:
        with self._lock:
            self._entries.clear()
