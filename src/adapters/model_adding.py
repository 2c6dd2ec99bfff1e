"""Adding a model by its pin (`embedding-service models add HUB_ID --revision SHA`): the files sentence-transformers
reads are downloaded from the hub at that commit, each checked against the checksum the hub lists for it, every one
pinned by sha256 and size, and what serving the model needs (dimension, maximum sequence length, pooling, prompts,
Matryoshka sizes, remote code) read from the model itself into an entry of the models lock file."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

from adapters.model_lock import COMMIT, MODEL_NAME, SERVED_FILES, clashing, read_lock, write_entry
from adapters.model_provisioning import finish_model_dir, hub_download, sha256_of
from domain.errors import ModelIntegrityError
from domain.model import WEIGHT_SUFFIXES, ModelSpec, PinnedFile

log = logging.getLogger(__name__)

# sentence-transformers prompt names, by the input type they prefix; the first one a model declares is taken
PROMPT_NAMES = {
    "query": ("query", "search_query", "retrieval.query", "retrieval_query", "s2p_query"),
    "document": ("document", "passage", "search_document", "retrieval.passage", "retrieval_document", "corpus"),
}
MATRYOSHKA_KEYS = ("matryoshka_dimensions", "matryoshka_dims")
CARD = "README.md"
CARD_MATRYOSHKA = re.compile(r'"matryoshka_dims"\s*:\s*\[([\d\s,]*)\]')  # a generated card's loss parameters
# what sentence-transformers never reads: other runtimes' weights, training state, pictures, documents
SKIPPED_SUFFIXES = (
    ".onnx",
    ".h5",
    ".msgpack",
    ".ot",
    ".tflite",
    ".mlmodel",
    ".gguf",
    ".png",
    ".jpg",
    ".jpeg",
    ".gif",
    ".svg",
    ".webp",
    ".pdf",
    ".md",
)
SKIPPED_NAMES = frozenset({"training_args.bin", "optimizer.pt", "scheduler.pt", "trainer_state.json"})
PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".bin.index.json")


class ModelRefused(ValueError):
    """A model that cannot be added as asked: not pinned to a commit, a name already taken, remote code that was not
    trusted, or a pipeline this service cannot serve."""


def add_model(
    hub_id: str,
    revision: str,
    root: Path,
    lock_path: Path,
    *,
    name: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    trust_remote_code: bool = False,
    query_prompt: str | None = None,
    document_prompt: str | None = None,
    matryoshka: Sequence[int] | None = None,
) -> ModelSpec:
    """Download `hub_id` at the commit `revision` into `root`/<name>, verified, and record its lock entry.

    Raises ModelRefused (nothing downloaded, or the download removed again), ModelIntegrityError (a file differs
    from the checksum the hub lists; nothing is left behind), or huggingface_hub's errors (unreachable hub, unknown
    repository or revision). `query_prompt` / `document_prompt` replace the prompts the model declares ("" for none);
    `matryoshka` replaces the sizes its configuration or card declares. Remote code living in another repository is
    fetched by transformers from HF_ENDPOINT."""
    name = name or hub_id.rstrip("/").rsplit("/", 1)[-1]
    _check_pin(hub_id, revision, name, lock_path)
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    info = api.model_info(hub_id, revision=revision, files_metadata=True)
    if info.sha and info.sha != revision:
        raise ModelRefused(f"the hub answers {hub_id}@{revision} with commit {info.sha}; pin a commit sha")
    listed = {sibling.rfilename: sibling for sibling in info.siblings or []}
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}~", dir=root))
    try:
        staged = _StagedModel(api, hub_id, revision, staging, listed, endpoint, token)
        spec = staged.pin(name, trust_remote_code)
        spec = _with_facts(spec, staging, query_prompt, document_prompt, matryoshka)
        _place(staging, root / name, lock_path, spec)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("added %s (%s@%s) to %s; it is stored verified at %s", name, hub_id, revision[:12], lock_path, root / name)
    return spec


def _check_pin(hub_id: str, revision: str, name: str, lock_path: Path) -> None:
    if not COMMIT.fullmatch(revision):
        raise ModelRefused(
            f"revision {revision!r} of {hub_id} is not a commit: a pin is the full 40-character commit sha "
            f"(the hub lists them at https://huggingface.co/{hub_id}/commits/main)"
        )
    if not MODEL_NAME.fullmatch(name):
        raise ModelRefused(f"model name {name!r}: use letters, digits, '_', '.', '-' (--name)")
    other = clashing((name, hub_id), (spec for spec in read_lock(lock_path) if spec.name != name))
    if other is not None:
        raise ModelRefused(
            f"{name} ({hub_id}) would share a name with {other.name} ({other.hub_id}); choose another --name"
        )


class _StagedModel:
    """One add's download into its staging folder: the files chosen from the repository's listing, each checked
    against the hub's checksum as it arrives, remote code refused unless trusted."""

    def __init__(
        self,
        api: Any,
        hub_id: str,
        revision: str,
        folder: Path,
        listed: Mapping[str, Any],
        endpoint: str | None,
        token: str | None,
    ) -> None:
        self._api, self._hub_id, self._revision, self._folder = api, hub_id, revision, folder
        self._listed, self._endpoint, self._token = listed, endpoint, token
        self._pins: dict[str, PinnedFile] = {}

    def pin(self, name: str, trust_remote_code: bool) -> ModelSpec:
        """Download and verify the model's files (weights last, once its code is known to be acceptable); a spec
        of them whose facts are still to be read."""
        module_dirs = {""}
        if "modules.json" in self._listed:
            self._fetch(["modules.json"])
            module_dirs |= {str(m["path"]) for m in _modules(self._folder) if m.get("path")}
        chosen = chosen_files(self._listed, module_dirs)
        weights = [path for path in chosen if path.endswith(WEIGHT_SUFFIXES)]
        if not weights:
            raise ModelRefused(f"{self._hub_id}@{self._revision[:12]} holds no weights sentence-transformers loads")
        absent = [path for path in SERVED_FILES if path not in chosen]
        if absent:  # every backend tokenizes and counts with the fast tokenizer's tokenizer.json
            raise ModelRefused(f"{self._hub_id}@{self._revision[:12]} has no {', '.join(absent)} at its root")
        self._fetch([path for path in chosen if path not in weights and path not in self._pins])
        code = remote_code(self._folder, chosen)
        if code and not trust_remote_code:
            raise ModelRefused(
                f"{self._hub_id} runs code from its repository or another ({', '.join(code)}); having read that "
                "code, add it with MODEL_TRUST_REMOTE_CODE=true or --trust-remote-code"
            )
        code_revisions = self._code_revisions(code)
        self._fetch(weights)
        finish_model_dir(self._folder)
        return ModelSpec(
            name=name,
            hub_id=self._hub_id,
            revision=self._revision,
            files=tuple(self._pins[path] for path in sorted(self._pins)),
            dimension=0,  # read from the model next
            max_seq_length=0,
            trust_remote_code=bool(code),
            code_revisions=code_revisions,
        )

    def _fetch(self, paths: Sequence[str]) -> None:
        for path in hub_download(self._hub_id, self._revision, paths, self._folder, self._endpoint, self._token):
            self._pins[path] = self._verified(path)  # each checked as it arrives

    def _verified(self, path: str) -> PinnedFile:
        """The downloaded file's pin, once its size and checksum are the ones the hub lists (sha256 for an LFS
        file, the git blob id for another)."""
        local, listed = self._folder / path, self._listed[path]
        size = local.stat().st_size
        lfs = listed.lfs
        expected_size = lfs.size if lfs is not None else listed.size
        where = f"{self._hub_id}@{self._revision[:12]} {path}"
        if expected_size is not None and size != expected_size:
            raise ModelIntegrityError(f"{where} is {size} bytes, the hub lists {expected_size}; refusing it")
        sha256 = sha256_of(local)
        if lfs is not None and sha256 != lfs.sha256:
            raise ModelIntegrityError(f"{where} has sha256 {sha256}, the hub lists {lfs.sha256}; refusing it")
        if lfs is None and listed.blob_id and git_blob_id(local) != listed.blob_id:
            raise ModelIntegrityError(f"{where} is not the git blob {listed.blob_id} the hub lists; refusing it")
        return PinnedFile(path, sha256, size)

    def _code_revisions(self, code: Sequence[str]) -> tuple[tuple[str, str], ...]:
        """The commit of each repository the model's code is fetched from ("repo--module.Class"): the current one of
        another repository, so that code is pinned too, or the model's own revision where it names itself (from a
        local folder transformers would fetch that code from the hub, not the folder)."""
        repos = sorted({ref.split("--", 1)[0] for ref in code if "--" in ref})
        if len(repos) > 1:
            raise ModelRefused(f"{self._hub_id} runs code from several repositories ({', '.join(repos)}); one at most")
        pinned: list[tuple[str, str]] = []
        for repo in repos:
            commit = self._revision if repo == self._hub_id else str(self._api.model_info(repo).sha or "")
            if not COMMIT.fullmatch(commit):
                raise ModelRefused(f"the hub names no commit of {repo}, whose code {self._hub_id} runs")
            log.info("%s runs code from %s, pinned at commit %s", self._hub_id, repo, commit)
            pinned.append((repo, commit))
        return tuple(pinned)


def chosen_files(listed: Mapping[str, Any], module_dirs: set[str]) -> list[str]:
    """The files of a repository's listing sentence-transformers reads: those of its root and module folders (not
    onnx/, openvino/, ...), but not another runtime's weights, pickled weights beside safetensors ones, training
    state, pictures or documents other than the card."""
    by_dir: dict[str, list[str]] = {}
    for path in listed:
        parent = PurePosixPath(path).parent.as_posix()
        by_dir.setdefault("" if parent == "." else parent, []).append(path)
    chosen: list[str] = []
    for folder, paths in by_dir.items():
        if folder not in module_dirs:
            continue
        has_safetensors = any(path.endswith(".safetensors") for path in paths)
        for path in paths:
            file_name = PurePosixPath(path).name
            if file_name == CARD and folder == "":
                chosen.append(path)
            elif (
                file_name.startswith((".", "openvino_"))
                or file_name.endswith(SKIPPED_SUFFIXES)
                or file_name in SKIPPED_NAMES
                or (has_safetensors and file_name.endswith(PICKLED_WEIGHTS))
            ):
                continue
            else:
                chosen.append(path)
    return sorted(chosen)


def remote_code(folder: Path, paths: Sequence[str]) -> list[str]:
    """The code a model's configuration names (auto_map entries, modules of other than sentence-transformers)."""
    references: set[str] = set()
    for path in paths:
        if path.endswith("config.json"):
            document = _json(folder / path)
            auto_map = document.get("auto_map") if isinstance(document, dict) else None
            for value in auto_map.values() if isinstance(auto_map, dict) else ():
                references.update(ref for ref in (value if isinstance(value, list) else [value]) if ref)
    for module in _modules(folder):
        kind = str(module.get("type", ""))
        if kind and not kind.startswith("sentence_transformers."):
            references.add(kind)
    return sorted(map(str, references))


def git_blob_id(path: Path) -> str:
    """The git object id of a file: what the hub lists for a file kept outside LFS."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _modules(folder: Path) -> list[dict[str, Any]]:
    listed = _json(folder / "modules.json")
    return [module for module in listed if isinstance(module, dict)] if isinstance(listed, list) else []


def _with_facts(
    spec: ModelSpec,
    folder: Path,
    query_prompt: str | None,
    document_prompt: str | None,
    matryoshka: Sequence[int] | None,
) -> ModelSpec:
    """`spec` with what the model itself says: loaded with sentence-transformers (its remote code pinned), its
    output size measured on a text, its pooling, maximum sequence length and prompts read from the loaded pipeline."""
    from adapters.sentence_transformer_embedder import open_model

    model = open_model(spec, folder, "cpu")
    dimension = int(model.encode(["dimension probe"], convert_to_numpy=True).shape[-1])
    poolings = [module for module in model if hasattr(module, "pooling_mode")]
    if not poolings:
        raise ModelRefused(f"{spec.hub_id} has no pooling module: not a sentence-transformers embedding model")
    if not all(getattr(module, "include_prompt", True) for module in poolings):
        raise ModelRefused(
            f"{spec.hub_id} pools without its prompt tokens (include_prompt false), which this service does not do"
        )
    modes = poolings[0].pooling_mode
    if not model.max_seq_length:
        raise ModelRefused(f"{spec.hub_id} declares no maximum sequence length")
    return replace(
        spec,
        dimension=dimension,
        max_seq_length=int(model.max_seq_length),
        pooling=modes if isinstance(modes, str) else "+".join(modes),
        prompts=prompts_by_input_type(dict(model.prompts or {}), query_prompt, document_prompt),
        matryoshka_dimensions=matryoshka_sizes(folder, dimension, matryoshka, spec.hub_id),
    )


def prompts_by_input_type(
    declared: Mapping[str, str], query: str | None = None, document: str | None = None
) -> tuple[tuple[str, str], ...]:
    """(input type, prefix) pairs from a model's sentence-transformers prompts, an override replacing one ("": none)."""
    prompts = {
        kind: next((declared[name] for name in names if declared.get(name)), "") for kind, names in PROMPT_NAMES.items()
    }
    prompts |= {kind: given for kind, given in (("query", query), ("document", document)) if given is not None}
    return tuple(sorted((kind, prefix) for kind, prefix in prompts.items() if prefix))


def matryoshka_sizes(
    folder: Path, dimension: int, requested: Sequence[int] | None, hub_id: str = ""
) -> tuple[int, ...]:
    """The sizes the model may be truncated to, largest first: `requested`, else those its configuration or else its
    card declares, keeping those up to its dimension."""
    if requested is not None:
        wrong = [size for size in requested if not 0 < size <= dimension]
        if wrong:
            raise ModelRefused(f"Matryoshka sizes {wrong} of {hub_id}: each must be between 1 and {dimension}")
        return tuple(sorted(set(requested), reverse=True))
    declared = declared_matryoshka(folder)
    kept = tuple(sorted({size for size in declared if 0 < size <= dimension}, reverse=True))
    if len(kept) < len(set(declared)):
        log.warning(
            "%s declares Matryoshka sizes %s; keeping those up to its dimension %d", hub_id, declared, dimension
        )
    return kept


def declared_matryoshka(folder: Path) -> tuple[int, ...]:
    """The Matryoshka sizes config_sentence_transformers.json or config.json declares, else its card's training
    parameters ("matryoshka_dims"); () for none."""
    for config in ("config_sentence_transformers.json", "config.json"):
        document = _json(folder / config)
        for key in MATRYOSHKA_KEYS:
            sizes = document.get(key) if isinstance(document, dict) else None
            if isinstance(sizes, list) and sizes and all(type(size) is int for size in sizes):
                return tuple(sizes)
    card = folder / CARD
    found = CARD_MATRYOSHKA.search(card.read_text(encoding="utf-8", errors="replace")) if card.is_file() else None
    return tuple(int(size) for size in found.group(1).replace(",", " ").split()) if found else ()


def _place(staging: Path, folder: Path, lock_path: Path, spec: ModelSpec) -> None:
    """Move the verified download to `folder` (replacing an earlier copy) and record its entry; if the entry cannot
    be written, the earlier copy is put back."""
    previous = folder.with_name(f".{folder.name}~replaced-{secrets.token_hex(4)}") if folder.exists() else None
    if previous is not None:
        folder.rename(previous)
    staging.rename(folder)
    try:
        write_entry(lock_path, spec)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        if previous is not None:
            previous.rename(folder)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
