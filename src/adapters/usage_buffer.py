"""Usage and key activity as requests report them: added up in memory and written by a background thread every
`flush_s` seconds in one transaction per store (not one write per request). Whatever a write could not store stays
buffered for the next try; closing (SIGTERM, the server's shutdown) writes what is left, and when the database
cannot take it then, it goes to a spill file of the process's own (one JSON line per record) that the next start
claims and writes. A crash loses what was not written yet: the last `flush_s` seconds, or while the database is
down, everything since it went down."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import uuid
from dataclasses import asdict
from datetime import date, datetime
from pathlib import Path

from adapters.resilience import describe_failure
from domain.model import UsageRecord
from domain.ports import ApiKeyStore, UsageLedger

log = logging.getLogger(__name__)

_Slot = tuple[str, date, str]
SPILL_PREFIX = "usage-unwritten."  # DATA_DIR/usage-unwritten.<id>.jsonl: one per process that could not write
CLAIMED_PREFIX = "usage-claimed."  # a spill file a starting process has taken (locked while it lives)


class BufferedUsageRecorder:
    def __init__(
        self,
        ledger: UsageLedger,
        keys: ApiKeyStore | None = None,
        flush_s: float = 2.0,
        spill_dir: Path | None = None,
    ) -> None:
        self._ledger = ledger
        self._keys = keys
        self._flush_s = flush_s
        self._spill_dir = spill_dir
        self._claims: list[tuple[Path, int]] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending: dict[_Slot, UsageRecord] = {}
        self._used: dict[str, datetime] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        self._read_spill()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="usage-flush", daemon=True)
            self._thread.start()

    def record(self, usage: UsageRecord) -> None:
        slot = (usage.account_id, usage.day, usage.model)
        with self._lock:
            held = self._pending.get(slot)
            self._pending[slot] = held.plus(usage) if held is not None else usage

    def touch(self, key_id: str, at: datetime) -> None:
        with self._lock:
            held = self._used.get(key_id)
            if held is None or at > held:
                self._used[key_id] = at

    def last_used(self, key_id: str) -> datetime | None:
        with self._lock:
            return self._used.get(key_id)

    def read(self, account_id: str, since: date) -> list[UsageRecord]:
        with self._flush_lock:  # not between a flush's write and its commit of the buffer: nothing counted twice
            stored = {(r.account_id, r.day, r.model): r for r in self._ledger.read(account_id, since)}
            with self._lock:
                pending = [r for slot, r in self._pending.items() if slot[0] == account_id and slot[1] >= since]
        for record in pending:
            slot = (record.account_id, record.day, record.model)
            held = stored.get(slot)
            stored[slot] = held.plus(record) if held is not None else record
        return list(stored.values())

    def flush(self) -> None:
        """Write what is buffered; on failure it stays buffered (merged with what arrives meanwhile)."""
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
                used, self._used = self._used, {}
            try:
                if pending:
                    self._ledger.add(list(pending.values()))
                    pending = {}
                    self._release_claims()  # what the spill files held was read back into what was just written
                if used and self._keys is not None:
                    self._keys.touch(used)
                used = {}
            except Exception as exc:
                with self._lock:
                    for slot, record in pending.items():
                        held = self._pending.get(slot)
                        self._pending[slot] = record.plus(held) if held is not None else record
                    for key_id, at in used.items():
                        if key_id not in self._used or self._used[key_id] < at:
                            self._used[key_id] = at
                if not self._failing:
                    log.warning("writing usage failed (%s); kept in memory, retrying", describe_failure(exc))
                self._failing = True
                raise
            if self._failing:
                log.info("writing usage works again; nothing buffered was lost")
                self._failing = False

    def _run(self) -> None:
        while not self._stop.wait(self._flush_s):
            try:
                self.flush()
            except Exception:
                pass  # logged once per failure streak by flush(); kept for the next round

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._flush_s + 5)
        try:
            self.flush()
        except Exception:
            self._write_spill()

    def _write_spill(self) -> None:
        """Everything not written (what was read back from spill files included) into a spill file of this process's
        own, then let go of the files read back: of several processes shutting down at once none overwrites
        another's."""
        with self._lock:
            pending = list(self._pending.values())
        requests = sum(r.requests for r in pending)
        if self._spill_dir is None:
            log.error("usage of %d requests could not be written at shutdown and is lost", requests)
            return
        if not pending:
            return  # only key activity: last_used_at is a hint, kept no further
        try:
            self._spill_dir.mkdir(parents=True, exist_ok=True)
            name = f"{SPILL_PREFIX}{uuid.uuid4().hex}.jsonl"
            partial = self._spill_dir / f"{name}.partial"
            with partial.open("w", encoding="utf-8") as out:
                for record in pending:
                    out.write(json.dumps({**asdict(record), "day": record.day.isoformat()}) + "\n")
                out.flush()
                os.fsync(out.fileno())
            partial.replace(self._spill_dir / name)  # complete before any start can see it
            self._release_claims()
            log.warning("usage of %d requests kept in %s until the database takes it", requests, self._spill_dir / name)
        except OSError as exc:
            log.error("usage of %d requests could not be written at shutdown nor spilled (%s)", requests, exc)

    def _read_spill(self) -> None:
        """Claim the spill files of stopped processes and buffer their records; a claimed file is locked (flock)
        while this process holds it and deleted once its records are written. A file another live process holds
        is left alone; one whose claimant died (a crash) is claimed again. Lines that do not parse go to
        usage-bad.*.jsonl."""
        if self._spill_dir is None or not self._spill_dir.is_dir():
            return
        candidates = sorted(self._spill_dir.glob(f"{SPILL_PREFIX}*.jsonl")) + sorted(
            self._spill_dir.glob(f"{CLAIMED_PREFIX}*.jsonl")
        )
        for path in candidates:
            claimed = self._claim(path)
            if claimed is not None:
                self._buffer_lines(*claimed)

    def _claim(self, path: Path) -> tuple[Path, int] | None:
        try:
            descriptor = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if path.name.startswith(SPILL_PREFIX):  # renamed under the lock: the inode, and the lock, stay
                claimed = path.with_name(f"{CLAIMED_PREFIX}{uuid.uuid4().hex}.jsonl")
                path.rename(claimed)
                path = claimed
        except (BlockingIOError, FileNotFoundError):
            os.close(descriptor)
            return None
        self._claims.append((path, descriptor))
        return path, descriptor

    def _buffer_lines(self, path: Path, descriptor: int) -> None:
        read, bad = 0, []
        with os.fdopen(os.dup(descriptor), encoding="utf-8") as lines:
            for line in lines:
                try:
                    fields = json.loads(line)
                    self.record(UsageRecord(**{**fields, "day": date.fromisoformat(fields["day"])}))
                    read += 1
                except (ValueError, TypeError, KeyError):
                    bad.append(line if line.endswith("\n") else line + "\n")
        if bad:
            kept = path.with_name(f"usage-bad.{uuid.uuid4().hex}.jsonl")
            kept.write_text("".join(bad), encoding="utf-8")
            log.error("%d usage lines of %s did not parse; kept in %s", len(bad), path.name, kept)
        log.info("read back %d usage records from %s", read, path.name)

    def _release_claims(self) -> None:
        claims, self._claims = self._claims, []
        for path, descriptor in claims:
            path.unlink(missing_ok=True)
            os.close(descriptor)


class NoUsageRecorder:
    """No hosted accounts: nothing is metered."""

    def record(self, usage: UsageRecord) -> None:
        return None

    def touch(self, key_id: str, at: datetime) -> None:
        return None

    def last_used(self, key_id: str) -> datetime | None:
        return None

    def read(self, account_id: str, since: date) -> list[UsageRecord]:
        return []

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None
