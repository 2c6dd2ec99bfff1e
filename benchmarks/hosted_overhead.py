"""What the hosted mode adds to a cache hit, measured side by side in one run: one server (HOSTED=true, the real
model on the CPU, its cache and accounts in one database) answers POST /v1/embed for a text already cached, once
with a static key (EMBEDDING_API_KEY: no account, no quota, no ledger) and once with an account's API key (key
lookup by SHA-256 in the database, quota check in Redis or in-process, the cache, the usage record), alternating
request by request on two keep-alive connections. Reported: per-round medians of each side, the median difference
and its spread over the rounds.

    .venv/bin/python benchmarks/hosted_overhead.py [--database postgres|sqlite] [--redis | --no-redis]
        [--rounds 7] [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile

from cryptography.fernet import Fernet
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import KEY, LoadClient, running_service

ROOT = Path(__file__).resolve().parents[1]
TEXT = "Ada Lovelace, met at the Lisbon workshop; follow up about the renewal next Thursday."


def create_database(admin_url: str) -> str:
    import psycopg

    name = f"embedding_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rpartition("/")[0] + "/" + name


def drop_database(admin_url: str, url: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{url.rpartition("/")[2]}" WITH (FORCE)')


async def timed(client: LoadClient) -> float:
    started = time.perf_counter()
    status, _, answer = await client.request("/v1/embed", {"text": TEXT})
    elapsed = time.perf_counter() - started
    if status != 200 or not answer["cached"]:  # type: ignore[index]
        raise SystemExit(f"expected a cache hit, got {status}: {str(answer)[:200]}")
    return elapsed * 1000


async def measure(base: str, account_key: str, rounds: int, requests: int) -> list[tuple[float, float]]:
    static, hosted = LoadClient(base, KEY), LoadClient(base, account_key)
    for client in (static, hosted):  # warm: the text is cached for both tenants, connections open
        for _ in range(20):
            await client.request("/v1/embed", {"text": TEXT})
    medians = []
    for _ in range(rounds):
        static_ms, hosted_ms = [], []
        for i in range(requests):
            first, second = (static, hosted) if i % 2 == 0 else (hosted, static)
            a = await timed(first)
            b = await timed(second)
            static_ms.append(a if first is static else b)
            hosted_ms.append(b if first is static else a)
        medians.append((statistics.median(static_ms), statistics.median(hosted_ms)))
    await static.close()
    await hosted.close()
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--redis", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=300, help="requests per side per round")
    args = parser.parse_args()

    data_dir = tempfile.mkdtemp(prefix="hosted-bench-")
    database_url = create_database(args.postgres_admin_url) if args.database == "postgres" else None
    env = {
        "HOSTED": "true",
        "JWT_SECRET": secrets.token_urlsafe(32),
        "ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "FREE_TIER_COMPUTE": "local",
        "BCRYPT_ROUNDS": "4",
        "DATA_DIR": data_dir,
        "FREE_TIER_DAILY_LIMIT": "100000000",
        "FREE_TIER_PER_MINUTE": "100000000",
        "LOG_LEVEL": "WARNING",
    }
    if database_url:
        env["DATABASE_URL"] = database_url
    if args.redis:
        env["REDIS_URL"] = args.redis_url
    try:
        with running_service(args.model, os.environ.get("MODEL_PATH", str(ROOT / "models")), env=env) as (base, _):
            signed = httpx.post(
                f"{base}/v1/auth/signup", json={"email": f"bench-{secrets.token_hex(4)}@example.com",
                                                "password": "benchmark-password"}
            )
            signed.raise_for_status()
            medians = asyncio.run(measure(base, signed.json()["api_key"], args.rounds, args.requests))
    finally:
        if database_url:
            drop_database(args.postgres_admin_url, database_url)
    static = [s for s, _ in medians]
    hosted = [h for _, h in medians]
    added = [h - s for s, h in medians]
    print(f"model {args.model}, database {args.database}, quotas in {'Redis' if args.redis else 'the process'}; "
          f"{args.rounds} rounds x {args.requests} requests per side, alternating")
    print(f"static key  p50 per round: {', '.join(f'{v:.2f}' for v in static)} ms")
    print(f"account key p50 per round: {', '.join(f'{v:.2f}' for v in hosted)} ms")
    print(f"added at p50: median {statistics.median(added):.2f} ms (rounds: min {min(added):.2f}, "
          f"max {max(added):.2f}); ratio {statistics.median(hosted) / statistics.median(static):.2f}x")


if __name__ == "__main__":
    main()
