"""Cache hit vs miss, measured side by side in one run: the real service (default CPU backend) with a SQLite or
PostgreSQL cache, answering /v1/embed and /v1/embed/batch for texts it has not seen (miss: looked up, computed,
stored) and the same texts again (hit: looked up only), interleaved text by text; plus in-process
sentence-transformers encode of the same texts with the same weights, as the cost a hit saves. CACHE_BACKEND=none
is the baseline: what a lookup and a store add to a miss.

    .venv/bin/python benchmarks/cache.py [--model all-mpnet-base-v2] [--caches none sqlite postgres] [--texts 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import LoadClient, running_service

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret", "Dennis"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Hamilton", "Ritchie"]
PLACES = ["Lisbon", "Rotterdam", "Osaka", "Toronto", "Nairobi", "Lyon", "Austin", "Tallinn"]


def texts(n: int, rng: random.Random) -> list[str]:
    """Contact-note-like texts, all different (a run tag keeps them out of any earlier cache)."""
    tag = uuid.uuid4().hex[:6]
    return [
        f"{rng.choice(FIRST)} {rng.choice(LAST)} ({tag}-{i}), met in {rng.choice(PLACES)}; "
        f"follow up about the {rng.choice(['renewal', 'demo', 'invoice', 'workshop'])} next "
        f"{rng.choice(['Monday', 'Thursday', 'month'])}."
        for i in range(n)
    ]


@contextmanager
def cache_env(kind: str) -> Iterator[dict[str, str]]:
    if kind == "none":
        yield {"CACHE_BACKEND": "none"}
        return
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield {"CACHE_BACKEND": "sqlite", "DATA_DIR": folder}
        return
    import psycopg

    admin = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"embedding_cache_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {"CACHE_BACKEND": "postgres", "CACHE_URL": f"{admin.rpartition('/')[0]}/{name}"}
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


async def measure(
    base: str, encode: Callable[[list[str]], object], n: int, batches: int, seed: int, cache: bool
) -> dict[str, float]:
    rng = random.Random(seed)
    client = LoadClient(base)
    miss, hit, local = [], [], []
    for text in texts(n, rng):
        started = time.perf_counter()
        first = await client.post("/v1/embed", {"text": text})
        miss.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        second = await client.post("/v1/embed", {"text": text})
        hit.append((time.perf_counter() - started) * 1000)
        assert not first["cached"] and second["cached"] is cache  # type: ignore[index]
        local.append(timed(lambda t=text: encode([t])))
    batch_miss, batch_hit, batch_local = [], [], []
    for _ in range(batches):
        batch = texts(100, rng)
        started = time.perf_counter()
        await client.post("/v1/embed/batch", {"texts": batch})
        batch_miss.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        answer = await client.post("/v1/embed/batch", {"texts": batch})
        batch_hit.append((time.perf_counter() - started) * 1000)
        assert answer["cached"] == [cache] * len(batch)  # type: ignore[index]
        batch_local.append(timed(lambda b=batch: encode(b)))
    await client.close()
    median = statistics.median
    return {
        "single_miss_ms": median(miss),
        "single_hit_ms": median(hit),
        "single_local_ms": median(local),
        "batch_miss_ms": median(batch_miss),
        "batch_hit_ms": median(batch_hit),
        "batch_local_ms": median(batch_local),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-mpnet-base-v2")
    parser.add_argument("--model-path", default=os.environ.get("MODEL_PATH", "./models"))
    parser.add_argument(
        "--caches", nargs="+", default=["none", "sqlite", "postgres"], choices=["none", "sqlite", "postgres"]
    )
    parser.add_argument("--texts", type=int, default=60, help="single texts per cache (each sent twice)")
    parser.add_argument("--batches", type=int, default=3, help="100-text batches per cache (each sent twice)")
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(Path(args.model_path) / args.model), device="cpu")

    def encode(batch: list[str]) -> object:
        return model.encode(batch, batch_size=len(batch), normalize_embeddings=True)

    encode(["warm-up"])
    print(f"{args.model}, service on its default CPU backend, {os.cpu_count()} cores; medians in ms")
    print(
        "cache     | single miss | single hit | hit/miss | in-process | hit/in-process | 100 miss | 100 hit | "
        "hit/miss | 100 in-process | hit/in-process"
    )
    for seed, kind in enumerate(args.caches):
        with cache_env(kind) as env, running_service(args.model, args.model_path, env=env) as (base, _):
            r = asyncio.run(measure(base, encode, args.texts, args.batches, seed, cache=kind != "none"))
        print(
            f"{kind:<9} | {r['single_miss_ms']:11.1f} | {r['single_hit_ms']:10.1f} | "
            f"{r['single_hit_ms'] / r['single_miss_ms']:8.3f} | {r['single_local_ms']:10.1f} | "
            f"{r['single_hit_ms'] / r['single_local_ms']:14.3f} | {r['batch_miss_ms']:8.0f} | "
            f"{r['batch_hit_ms']:7.1f} | {r['batch_hit_ms'] / r['batch_miss_ms']:8.3f} | "
            f"{r['batch_local_ms']:14.0f} | {r['batch_hit_ms'] / r['batch_local_ms']:14.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
