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
SERVED_FILES = ("config.json", "tokenizer.json")  # the architecture, and the tokenizer every backend counts with


class LockFileError(ValueError):
    """The models lock file cannot be read, or an entry is not a complete pin."""


def read_lock(path: Path) -> tuple[ModelSpec, ...]:
    """The models of the lock file at `path` (none when there is no such file)."""
    if not path.is_file():
        return ()
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
        except (KeyError, TypeError, ValueError) as exc:
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
    """A lock entry as a ModelSpec; raises ValueError (or KeyError, TypeError) naming what is wrong."""
    if not isinstance(entry, dict):
        raise TypeError("an entry must be an object")
    name, hub_id, revision = str(entry["name"]), str(entry["hub_id"]), str(entry["revision"])
    if not MODEL_NAME.fullmatch(name):
        raise ValueError(f"name {name!r}: use letters, digits, '_', '.', '-'")
    if not COMMIT.fullmatch(revision):
        raise ValueError(f"revision {revision!r} of {hub_id}: a pin is a full 40-character commit sha")
    files = tuple(
        PinnedFile(str(file_path), str(pin["sha256"]), int(pin["size"]))
        for file_path, pin in sorted(dict(entry["files"]).items())
    )
    if not files:
        raise ValueError(f"{name}: no pinned files")
    for pinned in files:
        if not SHA256.fullmatch(pinned.sha256) or pinned.size < 0 or _unsafe(pinned.path):
            raise ValueError(f"{name}: file {pinned.path!r} needs a safe relative path, a sha256 and a size")
    paths = {pinned.path for pinned in files}
    if not any(path.endswith(WEIGHT_SUFFIXES) for path in paths):
        raise ValueError(f"{name}: no weights file is pinned, so its weights would be served unverified")
    missing = sorted(set(SERVED_FILES) - paths)
    if missing:
        raise ValueError(f"{name}: pins no {', '.join(missing)}, which serving it reads")
    prompts = dict(entry.get("prompts") or {})
    unknown = set(prompts) - {kind.value for kind in InputType}
    if unknown:
        raise ValueError(f"{name}: prompts are for {', '.join(kind.value for kind in InputType)}, not {unknown}")
    code = dict(entry.get("code_revisions") or {})
    if any(not COMMIT.fullmatch(str(sha)) for sha in code.values()):
        raise ValueError(f"{name}: code_revisions must pin full commit shas")
    dimension = int(entry["dimension"])
    matryoshka = tuple(sorted({int(size) for size in entry.get("matryoshka_dimensions") or ()}, reverse=True))
    if any(not 0 < size <= dimension for size in matryoshka):
        raise ValueError(f"{name}: Matryoshka sizes must be between 1 and its dimension {dimension}")
    return ModelSpec(
        name=name,
        hub_id=hub_id,
        revision=revision,
        files=files,
        dimension=dimension,
        max_seq_length=int(entry["max_seq_length"]),
        matryoshka_dimensions=matryoshka,
        pooling=str(entry.get("pooling", "mean")),
        prompts=tuple(sorted((str(kind), str(prefix)) for kind, prefix in prompts.items())),
        trust_remote_code=bool(entry.get("trust_remote_code", False)),
        code_revisions=tuple(sorted((str(repo), str(sha)) for repo, sha in code.items())),
    )


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
