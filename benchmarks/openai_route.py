"""What OpenAI's route and the metrics cost: the same texts through POST /embed (the events dialect) and through
POST /v1/embeddings (float and base64), and through /v1/embeddings of a second service with METRICS_ENABLED=true,
measured alternately in one run on real weights; plus one 2048-input request.

    .venv/bin/python benchmarks/openai_route.py [--model all-MiniLM-L6-v2] [--rounds 5] [--requests 100]

Prints per-round medians of request latency (one short text per request, and 100 short texts per request) and the
ratios to /embed: the cost of OpenAI's shape (token counting for `usage`, base64 rendering) and of the metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import LoadClient, running_service  # noqa: E402

SHORT = [f"Jazz night number {i} at the harbour with the Lisbon quartet, doors open 19:30" for i in range(2048)]

SIDES = {
    "/embed": ("plain", "/embed", lambda texts: {"texts": texts}),
    "/v1/embeddings float": ("plain", "/v1/embeddings", lambda texts: {"input": texts, "encoding_format": "float"}),
    "/v1/embeddings base64": ("plain", "/v1/embeddings", lambda texts: {"input": texts, "encoding_format": "base64"}),
    "/v1/embeddings, metrics on": ("metrics", "/v1/embeddings", lambda texts: {"input": texts}),
}


async def timed(client: LoadClient, path: str, body: object) -> float:
    started = time.perf_counter()
    await client.post(path, body)
    return (time.perf_counter() - started) * 1000


async def measure(bases: dict[str, str], size: int, rounds: int, requests: int) -> dict[str, list[float]]:
    clients = {name: LoadClient(bases[server]) for name, (server, _, _) in SIDES.items()}
    for i in range(10):  # warm: code paths taken, connections open (taking turns: an idle one is closed after 5 s)
        for name, (_, path, body) in SIDES.items():
            await clients[name].post(path, body(SHORT[i : i + size]))
    medians: dict[str, list[float]] = {name: [] for name in SIDES}
    for _ in range(rounds):
        samples: dict[str, list[float]] = {name: [] for name in SIDES}
        names = list(SIDES)
        for i in range(requests):
            texts = SHORT[(i * size) % 1900 : (i * size) % 1900 + size]
            for name in names[i % len(names) :] + names[: i % len(names)]:  # rotate who goes first
                _, path, body = SIDES[name]
                samples[name].append(await timed(clients[name], path, body(texts)))
        for name in SIDES:
            medians[name].append(statistics.median(samples[name]))
    for client in clients.values():
        await client.close()
    return medians


async def big_request(base: str) -> float:
    client = LoadClient(base)
    started = time.perf_counter()
    answer = await client.post("/v1/embeddings", {"input": SHORT, "encoding_format": "base64"})
    elapsed = time.perf_counter() - started
    await client.close()
    assert len(answer["data"]) == len(SHORT)  # type: ignore[index]
    return elapsed


def report(title: str, medians: dict[str, list[float]]) -> None:
    print(title)
    base = medians["/embed"]
    for name, values in medians.items():
        ratios = [v / b for v, b in zip(values, base, strict=True)]
        print(
            f"  {name:30s} median {statistics.median(values):7.2f} ms (rounds {min(values):.2f}-{max(values):.2f}); "
            f"vs /embed {statistics.median(ratios):.3f}x ({min(ratios):.3f}-{max(ratios):.3f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=100, help="requests per side per round")
    args = parser.parse_args()
    model_path = os.environ.get("MODEL_PATH", str(ROOT / "models"))
    quiet = {"LOG_LEVEL": "WARNING"}
    with (
        running_service(args.model, model_path, env=quiet) as (plain, _),
        running_service(args.model, model_path, env={**quiet, "METRICS_ENABLED": "true"}) as (metrics, _),
    ):
        bases = {"plain": plain, "metrics": metrics}
        singles = asyncio.run(measure(bases, 1, args.rounds, args.requests))
        batches = asyncio.run(measure(bases, 100, args.rounds, max(10, args.requests // 5)))
        big = [asyncio.run(big_request(plain)) for _ in range(3)]
    print(f"model {args.model}, {args.rounds} rounds, sides alternating, one process each (metrics off / on)")
    report("one short text per request:", singles)
    report("100 short texts per request:", batches)
    print(f"2048 short texts in one /v1/embeddings request (base64): {', '.join(f'{s:.2f} s' for s in big)}")


if __name__ == "__main__":
    main()
