"""Side-by-side benchmark: the service over HTTP vs in-process sentence-transformers encode of the same model.

Runs the real service as a subprocess (`embedding-service serve`) and, in this process, the same weights
directly; the two are measured alternately in one run so machine noise hits both. Prints ratios.

    .venv/bin/python benchmarks/peoplepad_batch.py [--model all-mpnet-base-v2] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import httpx
from common import KEY, running_service
from sentence_transformers import SentenceTransformer


def contacts(n: int) -> list[str]:
    return [f"Contact {i}: Jane Doe {i}, ACME Corp, jane{i}@example.com, met at conference {i % 7}" for i in range(n)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-mpnet-base-v2")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--model-path", default=os.environ.get("MODEL_PATH", "./models"))
    args = parser.parse_args()

    with running_service(args.model, args.model_path) as (base, _):
        model = SentenceTransformer(str(Path(args.model_path) / args.model), device="cpu")
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
        texts = contacts(100)
        batch_body = {"inputs": [{"id": str(i), "text": t} for i, t in enumerate(texts)]}
        raw_batch, svc_batch, raw_one, svc_one = [], [], [], []
        model.encode(texts[:8], normalize_embeddings=True)
        client.post("/embed/batch", json=batch_body).raise_for_status()
        for _ in range(args.reps):
            t = time.perf_counter()
            model.encode(texts, batch_size=32, normalize_embeddings=True)
            raw_batch.append(time.perf_counter() - t)
            t = time.perf_counter()
            client.post("/embed/batch", json=batch_body).raise_for_status()
            svc_batch.append(time.perf_counter() - t)
            for text in texts[:10]:
                t = time.perf_counter()
                model.encode([text], normalize_embeddings=True)
                raw_one.append(time.perf_counter() - t)
                t = time.perf_counter()
                client.post("/embed", json={"input": text}).raise_for_status()
                svc_one.append(time.perf_counter() - t)

        rb, sb = statistics.median(raw_batch), statistics.median(svc_batch)
        ro, so = statistics.median(raw_one), statistics.median(svc_one)
        print(f"model {args.model}, {args.reps} reps, medians, {os.cpu_count()} CPUs")
        print(f"100-record batch: in-process {len(texts) / rb:.1f} texts/s, service {len(texts) / sb:.1f} texts/s, "
              f"service/raw throughput = {rb / sb:.2f}x")
        print(f"single text: in-process {ro * 1000:.1f} ms, service {so * 1000:.1f} ms, "
              f"service/raw latency = {so / ro:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
