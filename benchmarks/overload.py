"""Overload of long texts: goodput and answers of the service against its in-process limit, one run.

The issue-11 case: 32 clients, each sending 32 texts of ~300 words per request, back to back, honouring Retry-After,
against the service's default deadline (TIMEOUT_SECONDS=10). Goodput is texts answered 200 per second. The limit is
the same backend in-process (ONNX Runtime on the exported graph, as the service runs it on a CPU) at batch 32 on the
same texts. `--baseline-src` also runs an older checkout's service (e.g. a `git worktree` of the commit before
admission by cost), alternating with this one per rep.

    .venv/bin/python benchmarks/overload.py [--model all-MiniLM-L6-v2] [--seconds 30] [--reps 2]
                                            [--baseline-src /tmp/old-checkout/src]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from pathlib import Path

from common import LoadClient, running_service

from adapters.model_provisioning import VerifiedModelProvisioner
from adapters.sentence_transformer_loader import SentenceTransformerLoader
from domain.model import resolve_model

WORDS = (
    "meeting contact event concert market invoice follow-up conference project budget harbour pier quartet jazz "
    "lisbon rotterdam procurement renewal onboarding reporting demo pricing enterprise staff office lease hiring plan "
    "quarterly board review agenda minutes venue tickets sponsor catering volunteers schedule keynote workshop"
).split()


def long_texts(n: int, words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


async def overload(base: str, clients: int, texts: int, words: int, seconds: float) -> dict[str, object]:
    outcomes: list[tuple[int, float]] = []
    ends = time.monotonic() + seconds

    bodies = [{"texts": long_texts(texts, words, seed=seed)} for seed in range(16)]  # made ahead: no client CPU

    async def client(n: int) -> None:
        connection = LoadClient(base)
        batch = n
        while time.monotonic() < ends:
            body = bodies[batch % len(bodies)]
            batch += 1
            started = time.monotonic()
            try:
                status, headers, _ = await connection.request("/embed", body)
            except (ConnectionError, asyncio.IncompleteReadError):
                status, headers = 0, {}
                await connection.close()
            if time.monotonic() <= ends:
                outcomes.append((status, time.monotonic() - started))
            if status == 503:
                await asyncio.sleep(min(float(headers.get("retry-after", "1")), max(0.0, ends - time.monotonic())))
        await connection.close()

    await asyncio.gather(*(client(n) for n in range(clients)))
    ok = [elapsed for status, elapsed in outcomes if status == 200]
    refused = [elapsed for status, elapsed in outcomes if status == 503]
    return {
        "goodput": len(ok) * texts / seconds,
        "counts": {code: sum(1 for status, _ in outcomes if status == code) for code in sorted({s for s, _ in outcomes})},
        "ok_p50": statistics.median(ok) if ok else float("nan"),
        "ok_max": max(ok) if ok else float("nan"),
        "refused_p50": statistics.median(refused) if refused else float("nan"),
        "refused_max": max(refused) if refused else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--model-path", default=os.environ.get("MODEL_PATH", "./models"))
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--words", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--baseline-src", help="source tree of an older checkout to run alternately")
    args = parser.parse_args()

    spec = resolve_model(args.model)
    provisioner = VerifiedModelProvisioner(Path(args.model_path), sources=[])
    in_process = SentenceTransformerLoader(spec, provisioner, device="cpu", backend="onnx").load()
    sample = long_texts(args.texts * 4, args.words, seed=7)
    env = {"TIMEOUT_SECONDS": "10", "INFERENCE_BACKEND": "onnx"}
    sides = {"service": None} | ({"baseline": args.baseline_src} if args.baseline_src else {})
    limits: list[float] = []
    results: dict[str, list[dict[str, object]]] = {side: [] for side in sides}
    for rep in range(args.reps):
        in_process.embed(sample[: args.texts])
        started = time.perf_counter()
        for i in range(0, len(sample), args.texts):
            in_process.embed(sample[i : i + args.texts])
        limits.append(len(sample) / (time.perf_counter() - started))
        for side, src in sides.items():
            with running_service(args.model, args.model_path, env=env, src=src) as (base, _):
                asyncio.run(overload(base, 1, args.texts, args.words, 3))  # warm-up and a first measurement
                results[side].append(asyncio.run(overload(base, args.clients, args.texts, args.words, args.seconds)))
            print(f"rep {rep + 1}/{args.reps} {side}: {results[side][-1]}", file=sys.stderr)

    limit = statistics.median(limits)
    print(
        f"model {spec.name}, onnx on CPU, {os.cpu_count()} CPUs; {args.clients} clients x {args.texts} texts of "
        f"{args.words} words, {args.seconds:g} s per rep, {args.reps} reps (medians; min-max)"
    )
    print(f"in-process ORT limit, batch {args.texts}: {limit:.1f} texts/s ({min(limits):.1f}-{max(limits):.1f})")
    for side, runs in results.items():
        goodputs = [float(r["goodput"]) for r in runs]  # type: ignore[arg-type]
        ratios = [g / lim for g, lim in zip(goodputs, limits, strict=True)]
        print(
            f"{side:<9} goodput {statistics.median(goodputs):6.1f} texts/s = {statistics.median(ratios):.2f}x the limit "
            f"({min(ratios):.2f}-{max(ratios):.2f}); answers per rep {[r['counts'] for r in runs]}; "
            f"200 p50 {statistics.median(float(r['ok_p50']) for r in runs):.1f} s, "  # type: ignore[arg-type]
            f"max {max(float(r['ok_max']) for r in runs):.1f} s; "  # type: ignore[arg-type]
            f"503 p50 {statistics.median(float(r['refused_p50']) for r in runs) * 1000:.0f} ms, "  # type: ignore[arg-type]
            f"max {max(float(r['refused_max']) for r in runs) * 1000:.0f} ms"  # type: ignore[arg-type]
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
