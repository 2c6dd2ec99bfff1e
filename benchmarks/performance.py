"""Performance engine benchmark: the service vs in-process sentence-transformers encode of the same model, one run.

Starts the real service (`embedding-service serve`) as a subprocess and loads the same weights here; each workload
is measured on both, alternately, so machine noise hits both sides. Prints each ratio next to its target:

  concurrent single-text  16 clients each sending one text per request     >= 0.90x raw batched encode throughput
                          (raw at batch 32; also shown against raw at batch 16, all that 16 clients can fill)
  batch requests          sequential 100-text /embed/batch requests         >= 0.97x raw encode throughput
  idle single text        one request at a time on an idle service          <= 1.10x raw encode([text]) latency
  peak RSS                server VmHWM under 16 concurrent 32-text medium requests   <= 1.3 GB

    .venv/bin/python benchmarks/performance.py [--model all-mpnet-base-v2] [--reps 3] [--env KEY=VALUE ...]

`--env` passes settings to the service (e.g. `--env INFERENCE_BACKEND=onnx`); the in-process side always runs
sentence-transformers on torch, so the ratios then compare that backend's service with raw torch.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import httpx
from common import KEY, LoadClient, running_service
from sentence_transformers import SentenceTransformer

CLIENTS = 16


def short_texts(n: int) -> list[str]:
    return [f"Jane Doe {i}, ACME Corp, met at conference {i % 7}" for i in range(n)]


def medium_texts(n: int) -> list[str]:
    return [
        f"Note {i}: met Jane Doe at the regional sales conference in room {i % 13}. She leads procurement at "
        f"ACME Corp and asked for a follow-up call about the renewal of contract {i}, pricing for the "
        f"enterprise tier, onboarding for {i % 40 + 5} new staff, and a demo of the reporting features next month."
        for i in range(n)
    ]


def vm_hwm_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


async def concurrent_singles(base: str, texts: list[str], clients: int) -> float:
    """Each of `clients` connections sends its share of `texts` one per request, back to back; returns seconds."""
    connections = [LoadClient(base) for _ in range(clients)]

    async def one_client(client: LoadClient, mine: list[str]) -> None:
        for text in mine:
            await client.post("/embed", {"input": text})

    await asyncio.gather(*(one_client(c, [texts[i]]) for i, c in enumerate(connections)))  # open the connections
    started = time.perf_counter()
    await asyncio.gather(*(one_client(c, texts[i::clients]) for i, c in enumerate(connections)))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(c.close() for c in connections))
    return elapsed


async def concurrent_batches(base: str, batches: list[list[str]]) -> float:
    connections = [LoadClient(base) for _ in batches]

    async def send(client: LoadClient, batch: list[str]) -> None:
        await client.post("/embed/batch", {"inputs": [{"id": str(i), "text": t} for i, t in enumerate(batch)]})

    started = time.perf_counter()
    await asyncio.gather(*(send(c, b) for c, b in zip(connections, batches, strict=True)))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(c.close() for c in connections))
    return elapsed


def ratio_line(name: str, raw: float, service: float, ratio: float, unit: str, target: str) -> str:
    return f"{name:<24} raw {raw:>8.1f} {unit:<8} service {service:>8.1f} {unit:<8} ratio {ratio:5.2f}x  ({target})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-mpnet-base-v2")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--model-path", default=os.environ.get("MODEL_PATH", "./models"))
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE setting for the service")
    args = parser.parse_args()
    env = {"TIMEOUT_SECONDS": "600", "MAX_QUEUED_TEXTS": "2048"} | dict(kv.split("=", 1) for kv in args.env)

    model = SentenceTransformer(str(Path(args.model_path) / args.model), device="cpu")
    singles = short_texts(CLIENTS * 8)
    batch = [f"Contact {i}: {t}, jane{i}@example.com" for i, t in enumerate(short_texts(100))]
    medium = [medium_texts(32 * CLIENTS)[c * 32 : (c + 1) * 32] for c in range(CLIENTS)]
    results: dict[str, list[tuple[float, float]]] = {"singles": [], "singles16": [], "batch": [], "idle": []}

    with running_service(args.model, args.model_path, env=env) as (base, pid):
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=600)
        info = client.get("/metadata").json()
        model.encode(singles[:32], normalize_embeddings=True)
        idle_rss = vm_hwm_bytes(pid)
        for rep in range(args.reps):
            t = time.perf_counter()
            model.encode(singles, batch_size=32, normalize_embeddings=True)
            raw = len(singles) / (time.perf_counter() - t)
            svc = len(singles) / asyncio.run(concurrent_singles(base, singles, CLIENTS))
            results["singles"].append((raw, svc))
            t = time.perf_counter()
            model.encode(singles, batch_size=CLIENTS, normalize_embeddings=True)
            results["singles16"].append((len(singles) / (time.perf_counter() - t), svc))

            body = {"inputs": [{"id": str(i), "text": text} for i, text in enumerate(batch)]}
            t = time.perf_counter()
            model.encode(batch, batch_size=32, normalize_embeddings=True)
            raw = len(batch) / (time.perf_counter() - t)
            t = time.perf_counter()
            client.post("/embed/batch", json=body).raise_for_status()
            svc = len(batch) / (time.perf_counter() - t)
            results["batch"].append((raw, svc))

            raw_ms, svc_ms = [], []
            for text in singles[:10]:
                t = time.perf_counter()
                model.encode([text], normalize_embeddings=True)
                raw_ms.append((time.perf_counter() - t) * 1000)
                time.sleep(0.05)
                t = time.perf_counter()
                client.post("/embed", json={"input": text}).raise_for_status()
                svc_ms.append((time.perf_counter() - t) * 1000)
                time.sleep(0.05)
            results["idle"].append((statistics.median(raw_ms), statistics.median(svc_ms)))
            print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr)

        before = vm_hwm_bytes(pid)
        seconds = asyncio.run(concurrent_batches(base, medium))
        peak = vm_hwm_bytes(pid)

    print(f"model {args.model}; service {info['library']} backend {info.get('backend', 'torch')} on "
          f"{info['device']}; {os.cpu_count()} CPUs; {args.reps} reps, medians; settings {env}")

    def med(key: str) -> tuple[float, float, float]:
        """Medians of each side and of the per-rep ratios (each rep measures both sides back to back)."""
        raw_values, svc_values = zip(*results[key], strict=True)
        ratio = statistics.median(s / r for r, s in results[key])
        return statistics.median(raw_values), statistics.median(svc_values), ratio

    print(ratio_line(f"{CLIENTS} concurrent singles", *med("singles"), "texts/s", "target >= 0.90x"))
    print(ratio_line(f"  same, raw at batch {CLIENTS}", *med("singles16"), "texts/s", f"{CLIENTS} clients: <= {CLIENTS}/call"))
    print(ratio_line("100-text batch requests", *med("batch"), "texts/s", "target >= 0.97x"))
    print(ratio_line("idle single text", *med("idle"), "ms", "target <= 1.10x"))
    print(f"peak RSS: {peak / 1e9:.2f} GB under {CLIENTS} concurrent 32-text medium requests "
          f"({CLIENTS * 32 / seconds:.1f} texts/s; {idle_rss / 1e9:.2f} GB after warm-up, "
          f"{before / 1e9:.2f} GB before this load)  (target <= 1.3 GB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
