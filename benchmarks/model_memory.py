"""Peak memory per model: the server's VmHWM serving each model alone and several together (MODELS), after start-up
and after a load of concurrent batches on every served model.

    python benchmarks/model_memory.py [--path ./models] [--models all-mpnet-base-v2,all-MiniLM-L6-v2]

Each configuration runs in its own fresh server process (the default backend: ONNX Runtime on a CPU), whose exports
and reference vectors already exist under --path (run each model once first), so start-up is what a restart costs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import LoadClient, running_service  # noqa: E402
from performance import medium_texts, vm_hwm_bytes  # noqa: E402

CLIENTS = 8
REQUESTS = 6  # per client and model: 32-text medium batches


async def load(base: str, models: list[str]) -> None:
    async def client(model: str) -> None:
        http = LoadClient(base)
        try:
            done = 0
            while done < REQUESTS:
                status, headers, answer = await http.request(
                    "/v1/embed/batch", {"texts": medium_texts(32), "model": model}
                )
                if status == 503:  # overloaded: as a client should, wait as told and send it again
                    await asyncio.sleep(float(headers.get("retry-after", "1")))
                    continue
                if status != 200:
                    raise RuntimeError(f"/v1/embed/batch answered {status}: {answer}")
                done += 1
        finally:
            await http.close()

    await asyncio.gather(*(client(model) for model in models for _ in range(CLIENTS)))


def measure(models: list[str], path: str) -> tuple[float, float]:
    with running_service(models[0], path, env={"MODELS": ",".join(models)}) as (base, pid):
        started = vm_hwm_bytes(pid)
        asyncio.run(load(base, models))
        return started / 1e9, vm_hwm_bytes(pid) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--path", default="./models")
    parser.add_argument("--models", default="all-mpnet-base-v2,all-MiniLM-L6-v2")
    args = parser.parse_args()
    names = args.models.split(",")
    rows = [[name] for name in names] + [names]
    print(f"| models served | peak RSS after start-up | peak RSS after {CLIENTS} clients x {REQUESTS} batches each |")
    print("|---|---|---|")
    for models in rows:
        started, loaded = measure(models, args.path)
        print(f"| {' + '.join(models)} | {started:.2f} GB | {loaded:.2f} GB |", flush=True)


if __name__ == "__main__":
    main()
