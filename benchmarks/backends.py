"""Inference backends side by side, in-process: agreement with torch fp32 and speed, on one machine in one run.

For each backend the service can be configured with (INFERENCE_BACKEND / QUANTIZATION), loads the model the way the
service does (export, agreement check) and measures, alternating backends per rep: minimum cosine against torch fp32
on 200 texts (none of them a check text: a held-out set), the minimum the start-up check measured on the check
texts, single-text latency and batch-32 throughput. int8 (the opt-in SmoothQuant graph) is measured with its
agreement requirement lifted, to show what it reaches; the service serves it only above INT8_MIN_COSINE (0.995).

    .venv/bin/python benchmarks/backends.py [--model all-mpnet-base-v2] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from adapters.model_provisioning import VerifiedModelProvisioner
from adapters.sentence_transformer_loader import SentenceTransformerLoader
from domain.model import resolve_model

VARIANTS = [("torch", "none", 0.9999), ("onnx", "none", 0.9999), ("openvino", "none", 0.9999), ("onnx", "int8", 0.0)]


def texts(n: int) -> list[str]:
    words = "meeting contact event concert market invoice follow-up conference project budget harbour pier".split()
    return [f"{i}: " + " ".join(words[(i * 7 + k) % len(words)] for k in range(3 + i % 40)) for i in range(n)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-mpnet-base-v2")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--model-path", default=os.environ.get("MODEL_PATH", "./models"))
    args = parser.parse_args()
    spec = resolve_model(args.model)
    provisioner = VerifiedModelProvisioner(Path(args.model_path), sources=[])
    embedders = {
        f"{backend} {'int8' if q == 'int8' else 'fp32'}": SentenceTransformerLoader(
            spec, provisioner, device="cpu", backend=backend, quantization=q,  # type: ignore[arg-type]
            min_cosine=floor, int8_min_cosine=floor,
        ).load()
        for backend, q, floor in VARIANTS
    }
    sample = texts(200)
    reference = embedders["torch fp32"].embed(sample)
    batch = texts(32)
    latency: dict[str, list[float]] = {name: [] for name in embedders}
    throughput: dict[str, list[float]] = {name: [] for name in embedders}
    for _ in range(args.reps):
        for name, embedder in embedders.items():
            single = []
            for text in sample[:10]:
                started = time.perf_counter()
                embedder.embed([text])
                single.append(time.perf_counter() - started)
            latency[name].append(statistics.median(single))
            started = time.perf_counter()
            embedder.embed(batch)
            throughput[name].append(len(batch) / (time.perf_counter() - started))
    base_latency = statistics.median(latency["torch fp32"])
    base_throughput = statistics.median(throughput["torch fp32"])
    print(f"model {spec.name}; {os.cpu_count()} CPUs; {args.reps} reps, medians; cosine over {len(sample)} texts")
    print(f"{'backend':<14} {'min cosine':>10} {'start-up check':>14} {'1 text ms':>10} {'speed-up':>9} "
          f"{'batch-32 texts/s':>17} {'speed-up':>9}")
    for name, embedder in embedders.items():
        vectors = embedder.embed(sample)
        cosine = float(np.min(np.sum(vectors * reference, axis=1)))
        check = embedder.info.min_cosine_vs_torch
        lat, thr = statistics.median(latency[name]), statistics.median(throughput[name])
        print(f"{name:<14} {cosine:>10.6f} {'reference' if check is None else f'{check:.6f}':>14} "
              f"{lat * 1000:>10.1f} {base_latency / lat:>8.2f}x {thr:>17.1f} {thr / base_throughput:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
