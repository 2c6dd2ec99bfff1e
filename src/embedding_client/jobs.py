"""Resumable JSONL embedding jobs: IN lines {"id", "text"} -> OUT lines {"id", "model", "embedding"}.

OUT is append-only and fsync'ed after every chunk, so a crash loses at most the chunk in flight (never written)
and leaves at most one partial last line, which the next run cuts off before it skips every id already in OUT.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from embedding_client.client import EmbeddingClient
from embedding_client.errors import EmbeddingClientError, ModelMismatchError

log = logging.getLogger(__name__)


class JobFileError(EmbeddingClientError):
    """IN or OUT cannot be used as they are (bad line, duplicate id...); nothing was embedded because of it."""


@dataclass(frozen=True)
class Record:
    id: str | int
    text: str

    @property
    def key(self) -> str:
        return json.dumps(self.id)


@dataclass
class JobReport:
    total: int
    already_done: int
    embedded: int = 0
    model: str | None = None
    by_source: Counter[str] = field(default_factory=Counter)


def read_records(path: Path) -> Iterator[tuple[int, Record]]:
    """Yield (line number, record) for every non-blank line, raising JobFileError on the first bad one."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise JobFileError(f"{path} line {number}: not JSON ({exc.msg})") from None
            if not isinstance(value, dict):
                raise JobFileError(f"{path} line {number}: expected an object with 'id' and 'text'")
            record_id, text = value.get("id"), value.get("text")
            if isinstance(record_id, bool) or not isinstance(record_id, str | int) or record_id == "":
                raise JobFileError(f"{path} line {number}: 'id' must be a non-empty string or an integer")
            if not isinstance(text, str):
                raise JobFileError(f"{path} line {number}: 'text' must be a string")
            yield number, Record(record_id, text)


def check_input(path: Path) -> set[str]:
    """Validate all of IN before any work (a bad line must not stop an overnight job halfway); return its ids."""
    first_seen: dict[str, int] = {}
    for number, record in read_records(path):
        if record.key in first_seen:
            raise JobFileError(f"{path} line {number}: id {record.id!r} already used on line {first_seen[record.key]}")
        first_seen[record.key] = number
    return set(first_seen)


def recover_output(path: Path) -> tuple[set[str], str | None]:
    """Cut a partial last line left by a crash; return the ids already embedded and the model that made them."""
    if not path.exists():
        return set(), None
    with path.open("rb+") as out:
        data = out.read()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            log.warning(
                "%s ends in a partial record (%d bytes) from an interrupted run; cutting it off",
                path,
                len(data) - complete,
            )
            out.truncate(complete)
    done: set[str] = set()
    models: set[str] = set()
    for number, line in enumerate(data[:complete].decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
            done.add(json.dumps(value["id"]))
            models.add(value["model"])
            _ = value["embedding"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise JobFileError(f"{path} line {number} is not an output record; move the file aside") from None
    if len(models) > 1:
        raise JobFileError(f"{path} mixes vectors of {sorted(models)}; move it aside")
    return done, next(iter(models), None)


class EmbedFileJob:
    """Embed every record of IN not yet in OUT, appending to OUT chunk by chunk."""

    def __init__(self, in_path: Path, out_path: Path) -> None:
        self.in_path, self.out_path = in_path, out_path
        self.input_ids = check_input(in_path)
        self.total = len(self.input_ids)
        self.done, self.output_model = recover_output(out_path)

    def run(self, client: EmbeddingClient, chunk_size: int = 256, progress: bool = True) -> JobReport:
        model = client.model
        if self.output_model is not None and self.output_model != model:
            raise ModelMismatchError(
                f"{self.out_path} holds {self.output_model} vectors but the client embeds with {model}; "
                "refusing to mix them (pass --model, or write to a new file)"
            )
        already = len(self.input_ids & self.done)
        report = JobReport(total=self.total, already_done=already, model=model)
        with (
            self.out_path.open("a", encoding="utf-8") as out,
            tqdm(total=self.total, initial=already, unit="rec", disable=not progress, mininterval=1.0) as bar,
        ):
            for chunk in self._pending(chunk_size):
                vectors = client.embed([r.text for r in chunk], progress=False)
                out.writelines(
                    json.dumps({"id": r.id, "model": model, "embedding": v.tolist()}, ensure_ascii=False) + "\n"
                    for r, v in zip(chunk, vectors, strict=True)
                )
                out.flush()
                os.fsync(out.fileno())
                self.done.update(r.key for r in chunk)
                report.embedded += len(chunk)
                report.by_source[client.last_source or "unknown"] += len(chunk)
                bar.update(len(chunk))
        return report

    def _pending(self, chunk_size: int) -> Iterator[list[Record]]:
        chunk: list[Record] = []
        for _, record in read_records(self.in_path):
            if record.key in self.done:
                continue
            chunk.append(record)
            if len(chunk) >= chunk_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
