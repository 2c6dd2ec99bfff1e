"""embed-file as a real process, killed with SIGKILL mid-job against a running (slowed, fake-backend) service."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from dependency_injector import providers

from adapters.fake_embedder import FakeEmbedder, FakeEmbedderLoader
from domain.model import KNOWN_MODELS
from entrypoints.http.app import create_app
from tests.support import API_KEY, fake_settings, uvicorn_app

MINILM = KNOWN_MODELS["all-MiniLM-L6-v2"]


@pytest.fixture()
def slow_service() -> Iterator[tuple[str, FakeEmbedder]]:
    """The real app in a uvicorn thread, its fake model taking 10 ms per text."""
    app = create_app(fake_settings(model_name="all-MiniLM-L6-v2"))
    app.state.container.loader.override(providers.Object(FakeEmbedderLoader(MINILM, delay_per_text_s=0.01)))
    with uvicorn_app(app) as (url, _):
        embedder = app.state.container.host().embedder()
        assert isinstance(embedder, FakeEmbedder)
        yield url, embedder


def embed_file(url: str, in_path: Path, out_path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "EMBEDDING_SERVICE_URL": url, "EMBEDDING_API_KEY": API_KEY}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "entrypoints.cli",
            "embed-file",
            str(in_path),
            str(out_path),
            "--chunk-size",
            "10",
            "--no-fallback",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_sigkill_mid_job_then_rerun_gives_every_record_exactly_once(
    slow_service: tuple[str, FakeEmbedder], tmp_path: Path
) -> None:
    url, served = slow_service
    texts = [f"Event {i}: open-air cinema, pier {i % 9}" for i in range(300)]
    in_path, out_path = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    in_path.write_text("".join(json.dumps({"id": f"e{i}", "text": t}) + "\n" for i, t in enumerate(texts)))

    first = embed_file(url, in_path, out_path)
    deadline = time.monotonic() + 60
    while not out_path.exists() or out_path.read_text().count("\n") < 50:
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0]
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    written_before = out_path.read_text().count("\n")
    assert 50 <= written_before < 300

    second = embed_file(url, in_path, out_path)
    output, _ = second.communicate(timeout=120)
    assert second.returncode == 0, output
    assert f"{300 - written_before} embedded now (" in output and f"{written_before} were already done" in output

    records = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert [r["id"] for r in records] == [f"e{i}" for i in range(300)]
    vectors = np.array([r["embedding"] for r in records], dtype=np.float32)
    np.testing.assert_array_equal(vectors, FakeEmbedder(MINILM).embed(texts))
    # The service saw each record once, plus at most the one chunk that was in flight when the job was killed.
    assert 300 <= sum(served.calls) <= 300 + 10
