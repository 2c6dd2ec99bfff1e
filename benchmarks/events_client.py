"""Side-by-side benchmark for the events app: EmbeddingClient via the service vs in-process, same MiniLM weights.

In one run, alternating so machine noise hits all three: (a) direct sentence-transformers encode, (b) the
Python client against the real service process (POST /embed {"texts"}, split into requests of 100), (c) the
client's in-process fallback (no service URL). Prints medians and ratios against (a).

    .venv/bin/python benchmarks/events_client.py [--texts 1000] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import KEY, running_service
from sentence_transformers import SentenceTransformer

from embedding_client import EmbeddingClient

MODEL = "all-MiniLM-L6-v2"


def events(n: int) -> list[str]:
    places = ["harbour", "old town hall", "botanical garden", "pier 4", "riverside park"]
    kinds = ["Jazz night", "Farmers market", "Open-air cinema: classic noir double bill", "Kids' coding club"]
    return [f"{kinds[i % len(kinds)]} at the {places[i % len(places)]}, week {i // 7}, ticket #{i}" for i in range(n)]


def timed(run: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    vectors = run()
    return time.perf_counter() - started, vectors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--model-path", default=os.environ.get("MODEL_PATH", "./models"))
    args = parser.parse_args()
    os.environ |= {"MODEL_PATH": args.model_path, "HF_HUB_OFFLINE": "true", "DEVICE": "cpu"}
    texts = events(args.texts)

    with running_service(MODEL, args.model_path) as (base, _):
        direct = SentenceTransformer(str(Path(args.model_path) / MODEL), device="cpu")
        remote = EmbeddingClient(base, KEY, model=MODEL, timeout=120, progress=False)
        local = EmbeddingClient(service_url="", model=MODEL, progress=False)
        runs: dict[str, Callable[[], np.ndarray]] = {
            "direct encode": lambda: direct.encode(texts, batch_size=32, normalize_embeddings=True),
            "client -> service": lambda: remote.embed(texts),
            "client in-process": lambda: local.embed(texts),
        }
        for run in runs.values():  # warm-up, and loads the in-process fallback model
            run()
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        results: dict[str, np.ndarray] = {}
        for _ in range(args.reps):
            for name, run in runs.items():
                elapsed, results[name] = timed(run)
                seconds[name].append(elapsed)

    base_rate = len(texts) / statistics.median(seconds["direct encode"])
    print(f"{MODEL}, {len(texts)} texts, {args.reps} reps, medians, {os.cpu_count()} CPUs")
    for name, values in seconds.items():
        rate = len(texts) / statistics.median(values)
        print(f"{name:>18}: {rate:7.1f} texts/s  ({rate / base_rate:.2f}x direct encode)")
    gap = np.abs(results["client -> service"] - results["client in-process"]).max()
    print(f"max |service - in-process| over all vector components: {gap:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
