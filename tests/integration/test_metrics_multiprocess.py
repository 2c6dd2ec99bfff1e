"""`embedding-service serve --workers 2` with METRICS_ENABLED=true as a real process: GET /metrics, whichever worker
answers it, adds up the requests of both (prometheus_client's multiprocess mode), and a clean stop leaves no live
gauge of a worker behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.support import API_KEY, AUTH, free_port, wait_http_ready

ROUTE = "/v1/embed"


def serve_workers(port: int, tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "entrypoints.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(
        [*command, "--workers", "2"],
        env={**os.environ, "EMBEDDER_BACKEND": "fake", "EMBEDDING_API_KEY": API_KEY, "METRICS_ENABLED": "true", **env},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def embed_requests(text: str) -> float:
    families = text_string_to_metric_families(text)
    return sum(
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == "embedding_http_requests_total"
        and sample.labels == {"route": ROUTE, "method": "POST", "status": "200"}
    )


def requests_by_process(folder: Path) -> dict[str, float]:
    """What each worker's own file holds (counter_<pid>.db), to see both answered some of the requests."""
    counts = {}
    for file in folder.glob("counter_*.db"):
        samples = [s for metric in MultiProcessCollector.merge([str(file)]) for s in metric.samples]
        counts[file.stem] = sum(
            s.value for s in samples if s.name == "embedding_http_requests_total" and s.labels.get("route") == ROUTE
        )
    return counts


def post(base: str, i: int) -> int:
    with httpx.Client() as client:  # a fresh connection each time: the kernel spreads them over the workers
        return client.post(f"{base}{ROUTE}", json={"text": f"text {i}"}, headers=AUTH).status_code


def test_metrics_add_up_across_worker_processes(tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_1.db").write_bytes(b"left by an earlier run")  # emptied at start (unreadable otherwise)
    (folder / "notes.txt").write_text("not ours")
    port = free_port()
    process = serve_workers(port, tmp_path, METRICS_MULTIPROC_DIR=str(folder))
    try:
        base = wait_http_ready(process, port)
        sent = 0
        with ThreadPoolExecutor(8) as pool:
            while sent < 400:
                assert set(pool.map(lambda i: post(base, i), range(sent, sent + 40))) == {200}
                sent += 40
                by_process = requests_by_process(folder)
                if len(by_process) == 2 and all(by_process.values()):
                    break
        assert len(by_process) == 2 and all(by_process.values()), by_process  # both workers answered some
        for _ in range(4):  # each scrape is answered by one worker or the other: always the total
            response = httpx.get(f"{base}/metrics")
            assert response.status_code == 200
            assert embed_requests(response.text) == sent
        assert sum(by_process.values()) == sent
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert f"metrics of 2 worker processes are collected in {folder}" in output
    assert not list(folder.glob("gauge_live*.db")), output  # each worker marked itself dead on the way out
    assert (folder / "notes.txt").exists() and not (folder / "counter_1.db").exists()


def test_without_a_folder_set_a_temporary_one_is_used_and_removed(tmp_path: Path) -> None:
    port = free_port()
    process = serve_workers(port, tmp_path)
    try:
        base = wait_http_ready(process, port)
        assert post(base, 0) == 200
        assert embed_requests(httpx.get(f"{base}/metrics").text) == 1
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    found = re.search(r"metrics of 2 worker processes are collected in (\S+)", output)
    assert found, output
    assert not Path(found.group(1)).exists()
