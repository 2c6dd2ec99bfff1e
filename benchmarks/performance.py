"""The service against the limit of what it runs: the same backend in-process, on the same texts, in one run.

Starts the real service (`embedding-service serve`) as a subprocess, reads from /metadata which backend it serves
(onnx, openvino or torch, fp32 or int8), and loads that same backend here with nothing around it: the same exported
graph in ONNX Runtime (or OpenVINO) fed by the model's own tokenizer, or sentence-transformers on torch. Each
workload is measured on both sides, alternately, rep by rep, so machine noise hits both; the ratios are medians of
the per-rep ratios, printed with their spread (min-max) next to the issue's targets:

  concurrent single-text  16 clients each sending one text per request     >= 0.92x in-process batch 32
  batch requests          sequential 100-text /embed/batch requests         >= 0.98x in-process batch 32
  idle single text        a lone caller, one text per request, back to back <= 1.05x in-process batch 1 latency
                          (also shown with 50 ms pauses between requests: each one wakes an idle service)
  peak RSS                server VmHWM under 16 concurrent 32-text medium requests   <= 0.9 GB (mpnet)

The in-process side is also measured at its best batch size (a sweep before the reps), and, unless --no-torch,
sentence-transformers on torch is measured too: the comparison earlier versions of this benchmark made.

    .venv/bin/python benchmarks/performance.py [--model all-mpnet-base-v2] [--reps 3] [--env KEY=VALUE ...]

`--env` passes settings to the service (e.g. `--env BATCH_WAIT_MS=0`, `--env INFERENCE_BACKEND=openvino`);
`--service-src /path/to/older/checkout/src` runs an older version of the service against the same in-process limit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import numpy as np
from common import KEY, LoadClient, running_service

CLIENTS = 16
PER_CLIENT = 24  # requests each client sends per rep: enough for the steady state (the first call and the tail,
#                  while the clients finish one by one, run part-full batches; with 8 they were ~10% of the run)
SWEEP = (1, 8, 16, 32, 64, 128)

Encode = Callable[[Sequence[str], int], np.ndarray]


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


# --- the in-process side --------------------------------------------------------------------------------------------


def graph_runner(backend: str, graph: Path, model_dir: Path, max_length: int) -> Encode:
    """The exported graph in ONNX Runtime (default options) or OpenVINO (compiled as the service compiles it), fed by
    the service's own tokenizing step (GraphTokenizer: truncation at the model's limit, padding to the longest)."""
    from adapters.onnx_backends import GraphTokenizer, openvino_compiled

    tokenizer = GraphTokenizer(model_dir, max_length)
    if backend == "openvino":
        compiled = openvino_compiled(graph)

        def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
            return np.asarray(compiled(inputs)[0])
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])

        def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
            return np.asarray(session.run(["sentence_embedding"], inputs)[0])

    def encode(texts: Sequence[str], batch_size: int) -> np.ndarray:
        return np.concatenate(
            [run(tokenizer.encode(texts[start : start + batch_size])) for start in range(0, len(texts), batch_size)]
        )

    return encode


def torch_runner(model_dir: Path) -> Encode:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")

    def encode(texts: Sequence[str], batch_size: int) -> np.ndarray:
        return np.asarray(model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True))

    return encode


def in_process(info: dict[str, object], model_dir: Path) -> tuple[str, Encode]:
    backend = str(info.get("backend", "torch"))
    max_length = int(info["max_seq_length"])  # type: ignore[call-overload]
    if backend == "torch":
        return "torch (sentence-transformers)", torch_runner(model_dir)
    from adapters.backend_artifacts import GRAPH_FILE, INT8_GRAPH_FILE

    graph = model_dir / "onnx" / (INT8_GRAPH_FILE if info.get("precision") == "int8" else GRAPH_FILE)
    name = "OpenVINO" if backend == "openvino" else "ONNX Runtime"
    return f"{name}, {graph.relative_to(model_dir.parent)}", graph_runner(backend, graph, model_dir, max_length)


def texts_per_s(encode: Encode, texts: Sequence[str], batch_size: int) -> float:
    started = time.perf_counter()
    encode(texts, batch_size)
    return len(texts) / (time.perf_counter() - started)


def best_batch_size(encode: Encode, texts: Sequence[str]) -> tuple[int, dict[int, float]]:
    rates = {size: max(texts_per_s(encode, texts, size) for _ in range(2)) for size in SWEEP}
    return max(rates, key=rates.__getitem__), rates


# --- the service side -----------------------------------------------------------------------------------------------


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


async def sequential_batches(base: str, batch: list[str], requests: int) -> float:
    client = LoadClient(base)
    body = {"inputs": [{"id": str(i), "text": t} for i, t in enumerate(batch)]}
    await client.post("/embed/batch", {"inputs": body["inputs"][:1]})  # open the connection
    started = time.perf_counter()
    for _ in range(requests):
        await client.post("/embed/batch", body)
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed


async def lone_caller_ms(base: str, texts: list[str], pause_s: float, raw: Callable[[str], object]) -> tuple[
    float, float
]:
    """A lone caller sending one text at a time on an otherwise idle service, `pause_s` between requests (0: back
    to back), and the in-process call on the same texts the same way, the two alternating in blocks of 5 texts:
    the median latency in ms of each side."""
    client = LoadClient(base)
    await client.post("/embed", {"input": texts[0]})
    svc_ms: list[float] = []
    raw_ms: list[float] = []
    for start in range(0, len(texts), 5):
        for text in texts[start : start + 5]:
            await asyncio.sleep(pause_s)
            started = time.perf_counter()
            raw(text)
            raw_ms.append((time.perf_counter() - started) * 1000)
        for text in texts[start : start + 5]:
            await asyncio.sleep(pause_s)
            started = time.perf_counter()
            await client.post("/embed", {"input": text})
            svc_ms.append((time.perf_counter() - started) * 1000)
    await client.close()
    return statistics.median(raw_ms), statistics.median(svc_ms)


async def concurrent_batches(base: str, batches: list[list[str]]) -> float:
    connections = [LoadClient(base) for _ in batches]

    async def send(client: LoadClient, batch: list[str]) -> None:
        await client.post("/embed/batch", {"inputs": [{"id": str(i), "text": t} for i, t in enumerate(batch)]})

    started = time.perf_counter()
    await asyncio.gather(*(send(c, b) for c, b in zip(connections, batches, strict=True)))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(c.close() for c in connections))
    return elapsed


# --- report -------------------------------------------------------------------------------------------------------


def summary(pairs: list[tuple[float, float]]) -> tuple[float, float, float, float, float]:
    """Medians of each side, and the median, min and max of the per-rep ratios service / in-process."""
    raw_values, svc_values = zip(*pairs, strict=True)
    ratios = [s / r for r, s in pairs]
    return statistics.median(raw_values), statistics.median(svc_values), statistics.median(ratios), min(ratios), max(
        ratios
    )


def line(name: str, pairs: list[tuple[float, float]], unit: str, target: str) -> str:
    raw, svc, ratio, low, high = summary(pairs)
    return (
        f"{name:<42} in-process {raw:>7.1f} {unit:<7} service {svc:>7.1f} {unit:<7} "
        f"ratio {ratio:5.2f}x ({low:.2f}-{high:.2f})  {target}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-mpnet-base-v2")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--model-path", default=os.environ.get("MODEL_PATH", "./models"))
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE setting for the service")
    parser.add_argument("--no-torch", action="store_true", help="skip the sentence-transformers (torch) comparison")
    parser.add_argument("--idle-texts", type=int, default=20)
    parser.add_argument("--service-src", help="run the service from another source tree (an older checkout's src/)")
    args = parser.parse_args()
    env = {"TIMEOUT_SECONDS": "600", "MAX_QUEUED_TEXTS": "2048"} | dict(kv.split("=", 1) for kv in args.env)
    model_dir = Path(args.model_path) / args.model

    singles = short_texts(CLIENTS * PER_CLIENT)
    batch = [f"Contact {i}: {t}, jane{i}@example.com" for i, t in enumerate(short_texts(100))]
    medium = [medium_texts(32 * CLIENTS)[c * 32 : (c + 1) * 32] for c in range(CLIENTS)]
    keys = ["singles", "singles16", "singles_best", "batch", "batch_best", "idle", "idle_paused"]
    results: dict[str, dict[str, list[tuple[float, float]]]] = {"limit": {k: [] for k in keys}}

    with running_service(args.model, args.model_path, env=env, src=args.service_src) as (base, pid):
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=600)
        info = client.get("/metadata").json()
        client.close()
        sides: dict[str, tuple[str, Encode]] = {"limit": in_process(info, model_dir)}
        if not args.no_torch and info.get("backend", "torch") != "torch":
            sides["torch"] = ("torch (sentence-transformers)", torch_runner(model_dir))
            results["torch"] = {k: [] for k in keys}
        best: dict[str, int] = {}
        sweeps: dict[str, dict[int, float]] = {}
        for side, (_, encode) in sides.items():
            encode(singles[:32], 32)  # warm up
            best[side], sweeps[side] = best_batch_size(encode, batch)
        asyncio.run(concurrent_singles(base, singles[:CLIENTS], CLIENTS))  # warm up the service
        idle_rss = vm_hwm_bytes(pid)

        for rep in range(args.reps):
            for side, (_, encode) in sides.items():
                svc = len(singles) / asyncio.run(concurrent_singles(base, singles, CLIENTS))
                results[side]["singles"].append((texts_per_s(encode, singles, 32), svc))
                results[side]["singles16"].append((texts_per_s(encode, singles, CLIENTS), svc))
                results[side]["singles_best"].append((texts_per_s(encode, singles, best[side]), svc))

                svc = 3 * len(batch) / asyncio.run(sequential_batches(base, batch, 3))
                raw = statistics.median(texts_per_s(encode, batch, 32) for _ in range(3))
                results[side]["batch"].append((raw, svc))
                raw = statistics.median(texts_per_s(encode, batch, best[side]) for _ in range(3))
                results[side]["batch_best"].append((raw, svc))

                one = lambda text: encode([text], 1)  # noqa: B023, E731
                results[side]["idle"].append(asyncio.run(lone_caller_ms(base, singles[: args.idle_texts], 0, one)))
                results[side]["idle_paused"].append(
                    asyncio.run(lone_caller_ms(base, singles[: args.idle_texts], 0.05, one))
                )
            print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr)

        before = vm_hwm_bytes(pid)
        seconds = asyncio.run(concurrent_batches(base, medium))
        peak = vm_hwm_bytes(pid)

    print(
        f"model {args.model}; service: {info['library']} backend {info.get('backend', 'torch')} "
        f"{info.get('precision', 'fp32')} on {info['device']}; {os.cpu_count()} CPUs; {args.reps} reps; "
        f"medians, per-rep ratio spread in brackets; service settings {env}"
    )
    for side, (name, _) in sides.items():
        sweep = ", ".join(f"{size}: {rate:.1f}" for size, rate in sweeps[side].items())
        print(f"\nagainst {name} in-process (texts/s by batch size on the 100 batch texts: {sweep})")
        r = results[side]
        limit = side == "limit"
        print(line(f"{CLIENTS} concurrent singles vs batch 32", r["singles"], "texts/s", "target >= 0.92x" * limit))
        print(line(f"  same, vs batch {CLIENTS} (all {CLIENTS} clients can fill)", r["singles16"], "texts/s", ""))
        print(line(f"  same, vs best batch {best[side]}", r["singles_best"], "texts/s", ""))
        print(line("100-text batch requests vs batch 32", r["batch"], "texts/s", "target >= 0.98x" * limit))
        print(line(f"  same, vs best batch {best[side]}", r["batch_best"], "texts/s", ""))
        print(line("lone caller, back to back, vs batch 1 (ms)", r["idle"], "ms", "target <= 1.05x" * limit))
        print(line("  same, 50 ms between requests", r["idle_paused"], "ms", ""))
    print(
        f"\npeak RSS: {peak / 1e9:.2f} GB under {CLIENTS} concurrent 32-text medium requests "
        f"({CLIENTS * 32 / seconds:.1f} texts/s; {idle_rss / 1e9:.2f} GB after warm-up, "
        f"{before / 1e9:.2f} GB before this load)  target <= 0.9 GB for mpnet"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
