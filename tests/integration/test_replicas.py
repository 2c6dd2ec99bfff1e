"""Scale-out: two hosted service processes behind HAProxy (Debian's package, the configuration shipped in
deploy/haproxy/), sharing one PostgreSQL database and one Redis. Quotas are exact across both, cache entries and key
revocations are seen by both, and one replica killed or restarted mid-load fails no request of a retrying client
(the Python client, the openai SDK) and loses no record of a running embed-file job."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import MODEL_ROOT, ServerProcess, free_port, hosted_env, postgres_database

ROOT = Path(__file__).resolve().parents[2]
HAPROXY_CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
DAILY_LIMIT = 24
PASSWORD = "correct horse battery"


@dataclass
class Cluster:
    replicas: list[ServerProcess]
    balancer: str
    env: dict[str, str]
    folder: Path


def haproxy() -> str:
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if found is None:
        pytest.fail("haproxy not found: `make tools` installs Debian's haproxy package")
    return found


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """Two replicas and the balancer; the free tier's daily texts: the test's parameter, else plenty."""
    daily_limit = getattr(request, "param", 1_000_000)
    with postgres_database() as database:
        env = hosted_env(
            DATABASE_URL=database,
            CACHE_BACKEND="postgres",
            REDIS_URL="redis://127.0.0.1:6379/0",
            FREE_TIER_DAILY_LIMIT=str(daily_limit),
            FREE_TIER_PER_MINUTE="100000",
            MODEL_PATH=str(MODEL_ROOT),
            SHUTDOWN_DRAIN_SECONDS="5",
        )
        replicas = [ServerProcess({**env, "DATA_DIR": str(tmp_path / f"d{n}")}, tmp_path / f"r{n}") for n in (0, 1)]
        for replica in replicas:
            replica.wait_ready()
        port = free_port()
        balancer = subprocess.Popen(
            [haproxy(), "-db", "-f", str(HAPROXY_CONFIG)],
            env={
                **os.environ,
                "LB_BIND": f"127.0.0.1:{port}",
                "REPLICA_1": f"127.0.0.1:{replicas[0].port}",
                "REPLICA_2": f"127.0.0.1:{replicas[1].port}",
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline and balancer.poll() is None, "haproxy did not come up"
                time.sleep(0.1)
            yield Cluster(replicas, base, env, tmp_path)
        finally:
            balancer.terminate()
            balancer.wait(timeout=10)
            for replica in replicas:
                replica.stop()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def account(base: str, email: str) -> tuple[str, str]:
    """A new account's API key and session token."""
    body = {"email": email, "password": PASSWORD}
    key = httpx.post(f"{base}/v1/auth/signup", json=body, timeout=10).json()["api_key"]
    token = httpx.post(f"{base}/v1/auth/login", json=body, timeout=10).json()["token"]
    return key, token


@pytest.mark.parametrize("cluster", [DAILY_LIMIT], indirect=True)
def test_quotas_cache_entries_and_revocations_hold_across_replicas(cluster: Cluster) -> None:
    first, second = (replica.base for replica in cluster.replicas)
    key, _ = account(cluster.balancer, "ada@example.com")
    # the day's texts are counted once across both replicas, and through the balancer
    statuses = [
        httpx.post(f"{base}/v1/embed", json={"text": f"text {n}"}, headers=bearer(key), timeout=10).status_code
        for n, base in enumerate([first, second, cluster.balancer] * 10)
    ]
    assert statuses == [200] * DAILY_LIMIT + [429] * (30 - DAILY_LIMIT)
    # a text embedded by one replica is a cache hit on the other (a fresh account: the quota above is spent)
    other_key, other_token = account(cluster.balancer, "grace@example.com")
    text = {"text": "the harbour jazz night"}
    assert httpx.post(f"{first}/v1/embed", json=text, headers=bearer(other_key)).json()["cached"] is False
    assert httpx.post(f"{second}/v1/embed", json=text, headers=bearer(other_key)).json()["cached"] is True
    # a key revoked on one replica is refused by the other
    created = httpx.post(f"{first}/v1/keys", headers=bearer(other_token), timeout=10).json()
    assert httpx.post(f"{second}/v1/embed", json=text, headers=bearer(created["api_key"])).status_code == 200
    revoked = httpx.delete(f"{first}/v1/keys/{created['prefix']}", headers=bearer(other_token), timeout=10)
    assert revoked.status_code == 200
    refused = httpx.post(f"{second}/v1/embed", json=text, headers=bearer(created["api_key"]))
    assert refused.status_code == 401


def load(base: str, key: str, seconds: float) -> tuple[list[int], list[str]]:
    """The Python client and the openai SDK, both retrying, sending embeddings for `seconds`; their answers."""
    from openai import OpenAI

    from embedding_client import EmbeddingClient

    sizes: list[int] = []
    failures: list[str] = []

    def python_client(worker: int) -> None:
        client = EmbeddingClient(base, key, model="all-mpnet-base-v2", fallback_to_local=False, max_retries=8)
        end, n = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            n += 1
            try:
                sizes.append(len(client.embed([f"python {worker}-{n}", f"client text {n}"])))
            except Exception as exc:  # a failed request is what this test is about
                failures.append(f"python client: {type(exc).__name__}: {exc}")

    def openai_sdk(worker: int) -> None:
        client = OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=8, timeout=30)
        end, n = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            n += 1
            try:
                answer = client.embeddings.create(model="all-mpnet-base-v2", input=[f"sdk {worker}-{n}"])
                sizes.append(len(answer.data))
            except Exception as exc:
                failures.append(f"openai SDK: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=python_client, args=(n,)) for n in range(2)]
    threads += [threading.Thread(target=openai_sdk, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 120)
    return sizes, failures


@pytest.mark.parametrize("how", ["killed", "restarted"])
def test_a_replica_going_away_mid_load_fails_no_request_of_a_retrying_client(cluster: Cluster, how: str) -> None:
    key, _ = account(cluster.balancer, "load@example.com")
    result: dict[str, tuple[list[int], list[str]]] = {}
    runner = threading.Thread(target=lambda: result.setdefault("load", load(cluster.balancer, key, 8.0)))
    runner.start()
    time.sleep(2.0)
    victim = cluster.replicas[1]
    if how == "killed":
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(timeout=10)
    else:
        victim.stop()  # SIGTERM: it drains
        replacement = ServerProcess({**cluster.env, "DATA_DIR": str(cluster.folder / "d1b")}, cluster.folder / "r1b")
        replacement.wait_ready()
        cluster.replicas.append(replacement)
    runner.join(timeout=180)
    sizes, failures = result["load"]
    assert failures == []
    assert len(sizes) > 20 and set(sizes) <= {1, 2}


def test_an_embed_file_job_through_the_balancer_loses_no_record_when_a_replica_restarts(
    cluster: Cluster, tmp_path: Path
) -> None:
    key, _ = account(cluster.balancer, "batch@example.com")
    records = [{"id": str(n), "text": f"record number {n} for the overnight job"} for n in range(4000)]
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(record) + "\n" for record in records))
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "entrypoints.cli",
            "embed-file",
            str(source),
            str(output),
            "--service-url",
            cluster.balancer,
            "--no-fallback",
            "--chunk-size",
            "20",
            "--no-progress",
        ],
        env={**os.environ, "EMBEDDING_API_KEY": key, "EMBEDDING_MODEL": "all-mpnet-base-v2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    while not output.exists() or output.stat().st_size == 0:  # the job is under way
        assert job.poll() is None, job.communicate()[0]
        time.sleep(0.05)
    cluster.replicas[0].stop()  # SIGTERM mid-job: it drains, the balancer and the client go to the other
    assert job.poll() is None  # still running when the replica went away
    log, _ = job.communicate(timeout=300)
    assert job.returncode == 0, log
    written = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["id"] for row in written] == [record["id"] for record in records]
    assert all(len(row["embedding"]) == 768 for row in written)
