"""The models lock file: models added by a pin (`embedding-service models add HUB_ID --revision SHA`), each entry
naming its hub id, revision, the sha256 and size of every file, and what serving it needs (dimension, maximum
sequence length, pooling, prompts, Matryoshka sizes, remote code). MODEL_NAME and MODELS may name its entries
beside the built-in models."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from adapters.backend_artifacts import atomic_target
from domain.model import KNOWN_MODELS, WEIGHT_SUFFIXES, InputType, ModelSpec, PinnedFile

LOCK_VERSION = 1
COMMIT = re.compile(r"^[0-9a-f]{40}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
POOLING = re.compile(r"^[a-z_]{1,64}$")  # sentence-transformers' pooling mode: mean, cls, max, lasttoken, ...
SERVED_FILES = ("config.json", "tokenizer.json")  # the architecture, and the tokenizer every backend counts with


class LockFileError(ValueError):
    """The models lock file cannot be read, or an entry is not a complete pin."""


def read_lock(path: Path) -> tuple[ModelSpec, ...]:
    """The models of the lock file at `path` (none when there is no such file)."""
    if not path.exists():
        return ()
    if not path.is_file():
        raise LockFileError(f"models lock file {path} is not a file")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LockFileError(f"models lock file {path}: {exc}") from None
    if not isinstance(document, dict) or document.get("version") != LOCK_VERSION:
        raise LockFileError(f'models lock file {path}: expected an object with "version": {LOCK_VERSION}')
    entries = document.get("models")
    if not isinstance(entries, list):
        raise LockFileError(f'models lock file {path}: "models" must be a list')
    specs: list[ModelSpec] = []
    for number, entry in enumerate(entries):
        try:
            spec = spec_from_entry(entry)
        except ValueError as exc:
            raise LockFileError(f"models lock file {path}, entry {number}: {exc}") from None
        other = clashing(spec.aliases, specs)
        if other is not None:
            shared = ", ".join(sorted(set(spec.aliases) & set(other.aliases)))
            raise LockFileError(f"models lock file {path}: {shared} names two models")
        specs.append(spec)
    return tuple(specs)


def clashing(aliases: Iterable[str], others: Iterable[ModelSpec]) -> ModelSpec | None:
    """The built-in model or one of `others` answering to one of `aliases` (a short name or hub id), if any."""
    wanted = set(aliases)
    return next((other for other in (*KNOWN_MODELS.values(), *others) if wanted & set(other.aliases)), None)


def spec_from_entry(entry: Any) -> ModelSpec:
    """A lock entry as a ModelSpec; raises ValueError naming the field that is wrong."""
    if not isinstance(entry, dict):
        raise ValueError("an entry must be an object")
    name = _text(entry, "name", "?")
    if not MODEL_NAME.fullmatch(name):
        raise ValueError(f"name {name!r}: use letters, digits, '_', '.', '-'")
    hub_id, revision = _text(entry, "hub_id", name), _text(entry, "revision", name)
    if not COMMIT.fullmatch(revision):
        raise ValueError(f"{name}: revision {revision!r}: a pin is a full 40-character lowercase hex commit sha")
    files = _files(entry, name)
    prompts = _mapping(entry, "prompts", name)
    unknown = set(prompts) - {kind.value for kind in InputType}
    if unknown:
        raise ValueError(f"{name}: prompts are for {', '.join(kind.value for kind in InputType)}, not {unknown}")
    if any(not isinstance(prefix, str) for prefix in prompts.values()):
        raise ValueError(f'{name}: each prompt must be a string ("" for none)')
    code = _mapping(entry, "code_revisions", name)
    if any(not isinstance(sha, str) or not COMMIT.fullmatch(sha) for sha in code.values()):
        raise ValueError(f"{name}: code_revisions must pin full commit shas")
    dimension = _count(entry, "dimension", name)
    sizes = entry.get("matryoshka_dimensions") or []
    if not isinstance(sizes, list) or any(not _is_count(size) or size > dimension for size in sizes):
        raise ValueError(f"{name}: Matryoshka sizes must be whole numbers between 1 and its dimension {dimension}")
    pooling = entry.get("pooling", "mean")
    if not isinstance(pooling, str) or not POOLING.fullmatch(pooling):
        raise ValueError(f"{name}: pooling must name sentence-transformers' pooling mode (mean, cls, ...)")
    trust = entry.get("trust_remote_code", False)
    if not isinstance(trust, bool):
        raise ValueError(f"{name}: trust_remote_code must be true or false")
    return ModelSpec(
        name=name,
        hub_id=hub_id,
        revision=revision,
        files=files,
        dimension=dimension,
        max_seq_length=_count(entry, "max_seq_length", name),
        matryoshka_dimensions=tuple(sorted(set(sizes), reverse=True)),
        pooling=pooling,
        prompts=tuple(sorted(prompts.items())),
        trust_remote_code=trust,
        code_revisions=tuple(sorted(code.items())),
    )


def _text(entry: dict[str, Any], key: str, name: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: {key} must be a non-empty string")
    return value


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _count(entry: dict[str, Any], key: str, name: str) -> int:
    value = entry.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: {key} must be a whole number of at least 1, not {value!r}")
    return value


def _mapping(entry: dict[str, Any], key: str, name: str) -> dict[str, Any]:
    value = entry.get(key) or {}
    if not isinstance(value, dict):
        raise ValueError(f"{name}: {key} must be an object")
    return value


def _files(entry: dict[str, Any], name: str) -> tuple[PinnedFile, ...]:
    listed = _mapping(entry, "files", name)
    if not listed:
        raise ValueError(f"{name}: no pinned files")
    files = []
    for path, pin in sorted(listed.items()):
        sha = pin.get("sha256") if isinstance(pin, dict) else None
        size = pin.get("size") if isinstance(pin, dict) else None
        if not isinstance(sha, str) or not SHA256.fullmatch(sha) or _unsafe(path):
            raise ValueError(f"{name}: file {path!r} needs a safe relative path, a sha256 and a size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"{name}: file {path!r} needs a safe relative path, a sha256 and a size")
        files.append(PinnedFile(path, sha, size))
    paths = {pinned.path for pinned in files}
    if not any(path.endswith(WEIGHT_SUFFIXES) for path in paths):
        raise ValueError(f"{name}: no weights file is pinned, so its weights would be served unverified")
    missing = sorted(set(SERVED_FILES) - paths)
    if missing:
        raise ValueError(f"{name}: pins no {', '.join(missing)}, which serving it reads")
    return tuple(files)


def _unsafe(relative: str) -> bool:
    parts = relative.split("/")
    return not relative or relative.startswith("/") or "\\" in relative or any(p in ("", ".", "..") for p in parts)


def entry_of(spec: ModelSpec) -> dict[str, Any]:
    """A ModelSpec as its lock entry."""
    return {
        "name": spec.name,
        "hub_id": spec.hub_id,
        "revision": spec.revision,
        "dimension": spec.dimension,
        "max_seq_length": spec.max_seq_length,
        "pooling": spec.pooling,
        "prompts": dict(spec.prompts),
        "matryoshka_dimensions": list(spec.matryoshka_dimensions),
        "trust_remote_code": spec.trust_remote_code,
        "code_revisions": dict(spec.code_revisions),
        "files": {pinned.path: {"sha256": pinned.sha256, "size": pinned.size} for pinned in spec.files},
    }


def write_entry(path: Path, spec: ModelSpec) -> None:
    """Add `spec` to the lock file at `path` (created if absent), replacing an entry of the same name; the file is
    replaced whole, so a reader never sees half of it."""
    spec_from_entry(entry_of(spec))  # a spec that would not read back is never written
    kept = [other for other in read_lock(path) if other.name != spec.name]
    other = clashing(spec.aliases, kept)
    if other is not None:
        raise LockFileError(f"{spec.name} ({spec.hub_id}) clashes with {other.name} ({other.hub_id})")
    entries = sorted([*map(entry_of, kept), entry_of(spec)], key=lambda e: str(e["name"]))
    staging = atomic_target(path)
    staging.write_text(json.dumps({"version": LOCK_VERSION, "models": entries}, indent=2) + "\n", encoding="utf-8")
    staging.replace(path)
