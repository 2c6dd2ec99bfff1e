"""`embedding-service embed-file`: validation up front, resume after a crash, no mixing of models."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from adapters.fake_embedder import FakeEmbedder
from domain.model import KNOWN_MODELS, ModelSpec, Vectors
from embedding_client import EmbeddingClient
from embedding_client.jobs import EmbedFileJob, JobFileError
from entrypoints.cli import main

MINILM = KNOWN_MODELS["all-MiniLM-L6-v2"]
MPNET = KNOWN_MODELS["all-mpnet-base-v2"]


def write_input(path: Path, count: int) -> list[dict[str, object]]:
    records: list[dict[str, object]] = [{"id": f"event-{i}", "text": f"Event {i} at the harbour"} for i in range(count)]
    records[3]["id"] = 3  # integer ids are kept as integers
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    return records


def read_output(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class CrashingEmbedder(FakeEmbedder):
    """Behaves like the fake until `survive` calls have run, then dies like a killed process would."""

    def __init__(self, spec: ModelSpec, survive: int) -> None:
        super().__init__(spec)
        self.survive = survive

    def embed(self, texts: Sequence[str]) -> Vectors:
        if len(self.calls) >= self.survive:
            raise SystemExit("crash")
        return super().embed(texts)


@pytest.fixture()
def local_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    """No service URL; the in-process fallback builds the service's container on the fake backend."""
    monkeypatch.setenv("EMBEDDER_BACKEND", "fake")
    monkeypatch.setenv("EMBEDDING_MODEL", "all-MiniLM-L6-v2")


def test_embed_file_writes_every_record_once_in_order(tmp_path: Path, local_fake: None) -> None:
    records = write_input(tmp_path / "in.jsonl", 70)
    assert main(["embed-file", str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"), "--no-progress"]) == 0
    out = read_output(tmp_path / "out.jsonl")
    assert [r["id"] for r in out] == [r["id"] for r in records]
    assert {r["model"] for r in out} == {"all-MiniLM-L6-v2"}
    vectors = np.array([r["embedding"] for r in out], dtype=np.float32)
    np.testing.assert_array_equal(vectors, FakeEmbedder(MINILM).embed([str(r["text"]) for r in records]))
    assert main(["embed-file", str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"), "--no-progress"]) == 0
    assert read_output(tmp_path / "out.jsonl") == out


def test_resume_after_a_crash_neither_redoes_nor_loses_records(tmp_path: Path) -> None:
    records = write_input(tmp_path / "in.jsonl", 50)
    out_path = tmp_path / "out.jsonl"
    crashing = CrashingEmbedder(MINILM, survive=2)
    with pytest.raises(SystemExit):
        EmbedFileJob(tmp_path / "in.jsonl", out_path).run(
            EmbeddingClient(model="all-MiniLM-L6-v2", local_loader=lambda spec: crashing), chunk_size=10
        )
    assert len(read_output(out_path)) == 20
    with out_path.open("a") as out:  # a write cut short by the crash
        out.write('{"id": "event-20", "model": "all-MiniLM-L6-v2", "embedding": [0.01, 0.0')
    second = FakeEmbedder(MINILM)
    job = EmbedFileJob(tmp_path / "in.jsonl", out_path)
    report = job.run(EmbeddingClient(model="all-MiniLM-L6-v2", local_loader=lambda spec: second), chunk_size=10)
    assert (report.total, report.already_done, report.embedded, dict(report.by_source)) == (50, 20, 30, {"local": 30})
    assert sum(second.calls) == 30
    out = read_output(out_path)
    assert [r["id"] for r in out] == [r["id"] for r in records]
    vectors = np.array([r["embedding"] for r in out], dtype=np.float32)
    np.testing.assert_array_equal(vectors, FakeEmbedder(MINILM).embed([str(r["text"]) for r in records]))


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('{"id": "a", "text": "x"}\n{"id": "b", "text": 5}\n', "in.jsonl line 2: 'text' must be a string"),
        ('{"id": "a", "text": "x"}\n\n{"id": "a", "text": "y"}\n', "in.jsonl line 3: id 'a' already used on line 1"),
        ('{"id": "a", "text": "x"}\n{"id": "b", "te\n', "in.jsonl line 2: not JSON"),
        ('["a", "x"]\n', "in.jsonl line 1: expected an object"),
        ('{"id": true, "text": "x"}\n', "in.jsonl line 1: 'id' must be a non-empty string or an integer"),
    ],
)
def test_a_bad_input_line_stops_the_job_before_any_work(
    tmp_path: Path, local_fake: None, caplog: pytest.LogCaptureFixture, lines: str, message: str
) -> None:
    (tmp_path / "in.jsonl").write_text(lines)
    with caplog.at_level(logging.ERROR):
        assert main(["embed-file", str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl")]) == 1
    assert message in caplog.text
    assert not (tmp_path / "out.jsonl").exists()


def test_an_output_file_of_another_model_is_never_mixed(
    tmp_path: Path, local_fake: None, caplog: pytest.LogCaptureFixture
) -> None:
    records = write_input(tmp_path / "in.jsonl", 5)
    first = {"id": "event-0", "model": "all-mpnet-base-v2", "embedding": FakeEmbedder(MPNET).embed(["x"])[0].tolist()}
    (tmp_path / "out.jsonl").write_text(json.dumps(first) + "\n")
    before = (tmp_path / "out.jsonl").read_text()
    args = ["embed-file", str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"), "--no-progress"]
    with caplog.at_level(logging.ERROR):
        assert main([*args, "--model", "all-MiniLM-L6-v2"]) == 1
    assert "holds all-mpnet-base-v2 vectors but the client embeds with all-MiniLM-L6-v2" in caplog.text
    assert (tmp_path / "out.jsonl").read_text() == before
    assert main(args) == 0  # without --model, OUT's model wins over EMBEDDING_MODEL
    out = read_output(tmp_path / "out.jsonl")
    assert [r["id"] for r in out] == [r["id"] for r in records]
    assert {r["model"] for r in out} == {"all-mpnet-base-v2"}


def test_corrupt_output_is_refused_not_guessed(tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", 5)
    (tmp_path / "out.jsonl").write_text('{"id": "event-0"}\n')
    with pytest.raises(JobFileError, match="line 1 is not an output record"):
        EmbedFileJob(tmp_path / "in.jsonl", tmp_path / "out.jsonl")


def test_missing_input_file_is_exit_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        assert main(["embed-file", str(tmp_path / "nope.jsonl"), str(tmp_path / "out.jsonl")]) == 2
    assert "no such file" in caplog.text
