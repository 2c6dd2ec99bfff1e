"""Soak: mixed traffic at about twice the service's capacity, in bursts, against a real hosted server process.

    python benchmarks/soak.py [--model all-MiniLM-L6-v2] [--bursts 5] [--burst-seconds 30] [--json out.json]
    python benchmarks/soak.py --short        # the CI variant (tests/integration/test_soak.py): 5 bursts of 4 s

The traffic: single short texts, single texts served from the cache, long texts (about 1,500 characters), batches
of 100 short texts; from three free-tier accounts (their daily quota runs out during the run: 429) and a static key.
Capacity is measured first (4 closed-loop callers of the same mix); each burst then sends requests open-loop at twice
that rate. What must hold, or the command exits 1:
- every answer is 200, 429 (quota) or 503 `overloaded` with a Retry-After;
- the p99 latency of the admitted (200) requests is within TIMEOUT_SECONDS;
- the server's resident memory after the fifth burst is within 5% of after the first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import KEY, LoadClient, running_service  # noqa: E402

TIMEOUT_SECONDS = 10.0
SHORT = [f"Jane Doe {i}, ACME Corp, met at the conference in room {i % 13}" for i in range(5000)]
CACHED = [f"a text every tenant sends: the harbour jazz night number {i}" for i in range(20)]
LONG = " ".join(f"The quarterly review of item {i} covers budget, hiring and the office lease." for i in range(20))


def vm_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def one_request(rng: random.Random, n: int) -> tuple[str, str, dict[str, Any]]:
    """(kind, path, body) of the mix."""
    pick = rng.random()
    if pick < 0.45:
        return "single", "/v1/embed", {"text": f"{SHORT[n % len(SHORT)]} #{n}"}
    if pick < 0.65:
        return "cached", "/v1/embed", {"text": CACHED[n % len(CACHED)]}
    if pick < 0.85:
        return "long", "/v1/embed", {"text": f"{n}: {LONG}"}
    return "batch", "/v1/embed/batch", {"texts": [f"{SHORT[(n + i) % len(SHORT)]} b{n}" for i in range(100)]}


class Pool:
    """Keep-alive connections, one per request in flight; a fresh one when the pool is empty."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.idle: dict[str, list[LoadClient]] = {}

    async def send(self, key: str, path: str, body: object) -> tuple[int, dict[str, str], object, float]:
        clients = self.idle.setdefault(key, [])
        client = clients.pop() if clients else LoadClient(self.base, key)
        started = time.perf_counter()
        try:
            status, headers, answer = await client.request(path, body)
        except (OSError, asyncio.IncompleteReadError) as exc:
            await client.close()
            return 0, {}, {"error": {"type": type(exc).__name__}}, time.perf_counter() - started
        clients.append(client)
        return status, headers, answer, time.perf_counter() - started

    async def close(self) -> None:
        for clients in self.idle.values():
            for client in clients:
                await client.close()


async def capacity(base: str, seconds: float) -> float:
    """Requests per second of the mix served to 4 closed-loop callers (the static key: no quota)."""
    pool, rng, done = Pool(base), random.Random(1), 0
    end = time.monotonic() + seconds

    async def caller(number: int) -> None:
        nonlocal done
        n = number * 100_000
        while time.monotonic() < end:
            n += 1
            _, path, body = one_request(rng, n)
            status, _, _, _ = await pool.send(KEY, path, body)
            done += status == 200

    await asyncio.gather(*(caller(i) for i in range(4)))
    await pool.close()
    return done / seconds


async def burst(base: str, keys: list[str], rate: float, seconds: float, first: int) -> list[dict[str, Any]]:
    """Open-loop arrivals at `rate` per second for `seconds`; every answer recorded."""
    pool, rng, results = Pool(base), random.Random(first), []
    tasks: list[asyncio.Task[None]] = []

    async def arrival(n: int) -> None:
        kind, path, body = one_request(rng, n)
        key = keys[n % len(keys)]
        status, headers, answer, latency = await pool.send(key, path, body)
        error = answer.get("error", {}).get("type") if isinstance(answer, dict) else None
        results.append(
            {"kind": kind, "status": status, "latency_s": latency, "error": error, "retry_after": headers.get("retry-after")}
        )

    started, n = time.monotonic(), first
    while time.monotonic() - started < seconds:
        due = started + (n - first) / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        tasks.append(asyncio.create_task(arrival(n)))
        n += 1
    await asyncio.gather(*tasks)
    await pool.close()
    return results


def signup(base: str, number: int) -> str:
    body = {"email": f"soak{number}@example.com", "password": "a soak test password"}
    answer: str = httpx.post(f"{base}/v1/auth/signup", json=body, timeout=30).json()["api_key"]
    return answer


def run(model: str, model_path: str, bursts: int, burst_s: float, pause_s: float, calibrate_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="soak-") as data:
        env = {
            "HOSTED": "true",
            "JWT_SECRET": "soak-secret-" + "x" * 40,
            "ENCRYPTION_KEY": "vIrBEqXe8m3R66cffEVqjor9a0zfsHnURMJT9XPIoEY=",
            "FREE_TIER_COMPUTE": "local",
            "FREE_TIER_DAILY_LIMIT": "3000",
            "FREE_TIER_PER_MINUTE": "100000",
            "BCRYPT_ROUNDS": "4",
            "DATA_DIR": data,
            "TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
        }
        with running_service(model, model_path, env=env) as (base, pid):
            keys = [KEY, *(signup(base, n) for n in range(3))]
            asyncio.run(capacity(base, 2.0))  # warm-up: the admission estimate learns the model's speed
            served = asyncio.run(capacity(base, calibrate_s))
            rate = 2 * served
            records, rss = [], []
            for number in range(bursts):
                records += asyncio.run(burst(base, keys, rate, burst_s, first=number * 1_000_000))
                time.sleep(pause_s)
                rss.append(vm_rss_bytes(pid))
    return summarize(records, rss, served, rate)


def summarize(records: list[dict[str, Any]], rss: list[int], served: float, rate: float) -> dict[str, Any]:
    statuses = Counter(str(r["status"]) for r in records)
    admitted = sorted(r["latency_s"] for r in records if r["status"] == 200)
    p99 = admitted[min(len(admitted) - 1, int(0.99 * len(admitted)))] if admitted else float("inf")
    unexpected = [r for r in records if r["status"] not in (200, 429, 503)]
    bad_503 = [r for r in records if r["status"] == 503 and (r["error"] != "overloaded" or not r["retry_after"])]
    by_kind = Counter((r["kind"], r["status"]) for r in records)
    report = {
        "capacity_rps": round(served, 2),
        "offered_rps": round(rate, 2),
        "requests": len(records),
        "statuses": dict(statuses),
        "by_kind": {f"{kind} {status}": count for (kind, status), count in sorted(by_kind.items())},
        "p50_admitted_s": admitted[len(admitted) // 2] if admitted else None,
        "p99_admitted_s": p99,
        "rss_after_each_burst_mb": [round(value / 2**20, 1) for value in rss],
        "rss_last_over_first": round(rss[-1] / rss[0], 4),
        "unexpected_statuses": len(unexpected),
        "503_without_overloaded_and_retry_after": len(bad_503),
    }
    report["ok"] = (
        not unexpected
        and not bad_503
        and p99 <= TIMEOUT_SECONDS
        and report["rss_last_over_first"] <= 1.05
        and statuses.get("200", 0) > 0
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--path", default=os.environ.get("MODEL_PATH", "./models"))
    parser.add_argument("--bursts", type=int, default=5)
    parser.add_argument("--burst-seconds", type=float, default=30.0)
    parser.add_argument("--pause-seconds", type=float, default=5.0)
    parser.add_argument("--short", action="store_true", help="the CI variant: 5 bursts of 4 s, 1 s apart")
    parser.add_argument("--json", help="write the report here too")
    args = parser.parse_args()
    if args.short:
        args.bursts, args.burst_seconds, args.pause_seconds = 5, 4.0, 1.0
    report = run(args.model, args.path, args.bursts, args.burst_seconds, args.pause_seconds, calibrate_s=4.0)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
