"""torch backend (sentence-transformers): the only module that imports torch and sentence_transformers. Also exports
the pipeline to ONNX and computes the fp32 reference vectors other backends must agree with."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer
from transformers.utils import logging as transformers_logging

from adapters.backend_artifacts import (
    EXPORT_DIR,
    GRAPH_FILE,
    INT8_GRAPH_FILE,
    MANIFEST_FILE,
    OPSET,
    WEIGHTS_FILE,
    export_manifest,
)
from adapters.model_adding import remote_code
from adapters.token_counting import TokenCounter
from domain.model import EmbedInput, ModelInfo, ModelSpec, Vectors

log = logging.getLogger(__name__)

WARM_UP_TEXTS = ("warm-up", "A slightly longer warm-up sentence so the first real request is not the slow one.")


def pick_device(requested: str) -> str:
    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerEmbedder:
    def __init__(self, model: Any, info: ModelInfo, counter: TokenCounter) -> None:
        self._model = model
        self._info = info
        self._counter = counter

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def vocabulary_size(self) -> int:
        return self._counter.vocabulary_size

    @property
    def special_token_ids(self) -> frozenset[int]:
        return self._counter.framing.special_ids

    def embed(self, texts: Sequence[EmbedInput]) -> Vectors:
        if not all(isinstance(text, str) for text in texts):
            return self._embed_ids(texts)
        with torch.inference_mode():
            vectors = self._model.encode(
                list(texts),
                batch_size=max(1, len(texts)),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
                prompt="",  # the caller's prompt is already in the text: never the model's default prompt
            )
        return np.asarray(vectors, dtype=np.float32)

    def _embed_ids(self, texts: Sequence[EmbedInput]) -> Vectors:
        """The model's pipeline (transformer, pooling, normalization) on token ids, as encode() runs it on texts."""
        device = self._model.device
        with torch.inference_mode():
            features = {name: torch.from_numpy(array).to(device) for name, array in self._counter.padded(texts).items()}
            vectors = self._model(features)["sentence_embedding"].float()
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return np.asarray(vectors.cpu().numpy(), dtype=np.float32)

    def token_counts(self, texts: Sequence[EmbedInput]) -> list[int]:
        return self._counter.counts(texts)  # not self._model.tokenizer: encode() reconfigures it on every call


def open_model(spec: ModelSpec, model_dir: Path, device: str) -> Any:
    """The verified folder as a SentenceTransformer. A model whose architecture is code from its repository runs it
    only because its pin says so (the loader refuses it unless MODEL_TRUST_REMOTE_CODE=true); code living in another
    repository is fetched at the commit its lock entry pinned, never a branch."""
    if not spec.trust_remote_code:
        return SentenceTransformer(str(model_dir), device=device, local_files_only=True)
    pinned = dict(spec.code_revisions)
    configs = [path.relative_to(model_dir).as_posix() for path in model_dir.rglob("*config.json")]
    elsewhere = {ref.split("--")[0] for ref in remote_code(model_dir, configs) if "--" in ref}
    unpinned = sorted(elsewhere - set(pinned))
    if unpinned:  # transformers would fetch that code from the repository's default branch
        raise ValueError(f"{spec.name} runs code from {', '.join(unpinned)}, which its lock entry does not pin")
    if len(set(pinned.values())) > 1:
        raise ValueError(f"{spec.name}: remote code pinned at several commits cannot be loaded ({pinned})")
    code = {"code_revision": next(iter(pinned.values()))} if pinned else {}
    return SentenceTransformer(
        str(model_dir),
        device=device,
        local_files_only=not pinned,  # code in another repository: from the hub (or its cache) at the pinned commit
        trust_remote_code=True,
        model_kwargs=_KeepCodeRevision(code),
        config_kwargs=dict(code),
        processor_kwargs=dict(code),
    )


class _KeepCodeRevision(dict[str, Any]):
    """model_kwargs whose code_revision survives sentence-transformers 6.2 popping it (to resolve module classes)
    before the same dict reaches AutoModel.from_pretrained, which would otherwise fetch the code from `main`."""

    def pop(self, key: str, *default: Any) -> Any:
        if key == "code_revision" and key in self:
            return self[key]
        return super().pop(key, *default)


def load_sentence_transformer(
    spec: ModelSpec, path: str, requested_device: str, fp16: bool = False
) -> SentenceTransformerEmbedder:
    """Load verified weights from `path` (fp16 on a GPU when asked), pre-warm them and wrap them as an Embedder."""
    transformers_logging.disable_progress_bar()
    device = pick_device(requested_device)
    if fp16 and not device.startswith("cuda"):
        raise ValueError(f"fp16 needs a CUDA device; this one is {device!r} (use PRECISION=fp32 or auto)")
    model = open_model(spec, Path(path), device)
    model.eval()
    if fp16:
        model.half()
    info = ModelInfo(
        spec=spec,
        library_version=sentence_transformers.__version__,
        device=device,
        backend="torch",
        precision="fp16" if fp16 else "fp32",
    )
    counter = TokenCounter(Path(path) / "tokenizer.json", spec.max_seq_length)
    embedder = SentenceTransformerEmbedder(model, info, counter)
    embedder.embed(list(WARM_UP_TEXTS))
    log.info("model %s loaded from %s on %s and warmed up", spec.name, path, device)
    return embedder


def reference_vectors(spec: ModelSpec, model_dir: Path, texts: Sequence[str]) -> Vectors:
    """torch fp32 CPU vectors of `texts`: what every other backend must agree with."""
    log.info("computing torch fp32 reference vectors of %s for the backend agreement check", spec.name)
    model = open_model(spec, model_dir, "cpu").eval()
    with torch.inference_mode():
        vectors = model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True, prompt="")
    return np.asarray(vectors, dtype=np.float32)


def export_onnx(spec: ModelSpec, model_dir: Path) -> Path:
    """Export the model's whole sentence-transformers pipeline (transformer, pooling, normalization) to one ONNX
    graph, stored beside the weights with a manifest naming the weights it was made from; returns the file."""
    folder = model_dir / EXPORT_DIR
    graph = folder / GRAPH_FILE
    model = open_model(spec, model_dir, "cpu").eval()

    class Pipeline(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            features = {"input_ids": input_ids, "attention_mask": attention_mask}
            embedding: torch.Tensor = self.model(features)["sentence_embedding"]
            return embedding

    sample = model.tokenizer(["an example", "a slightly longer example sentence"], padding=True, return_tensors="pt")
    (folder / MANIFEST_FILE).unlink(missing_ok=True)  # no export is current until the new one is complete
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))  # everything in the making, removed as one
    dynamic = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    try:
        # The tracer warns that a few Python conditions (attention-mask checks) become constants: they hold for
        # every input this graph gets (a mask is always passed), and the loader's agreement check verifies it.
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Exporting aten::index operator")
            torch.onnx.export(
                Pipeline(),
                (sample["input_ids"], sample["attention_mask"]),
                str(staging / "exported.onnx"),
                dynamo=False,
                input_names=["input_ids", "attention_mask"],
                output_names=["sentence_embedding"],
                dynamic_axes={**dynamic, "sentence_embedding": {0: "batch"}},
                opset_version=OPSET,
            )
        _store_with_external_weights(staging / "exported.onnx", graph)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for derived in (INT8_GRAPH_FILE, "model_qint8.onnx"):  # derived from the old graph (and older versions' int8)
        (folder / derived).unlink(missing_ok=True)
    (folder / MANIFEST_FILE).write_text(json.dumps(export_manifest(spec)))
    return graph


def _store_with_external_weights(exported: Path, graph: Path) -> None:
    """Move the exported one-file graph to `graph`, its initializers into WEIGHTS_FILE beside it: the weights file
    first, then the graph that names it, each replacing the old one whole (both written in the exported file's
    folder first)."""
    import onnx

    model = onnx.load(str(exported))
    exported.unlink()
    staged = exported.parent
    onnx.save_model(
        model, str(staged / GRAPH_FILE), save_as_external_data=True, location=WEIGHTS_FILE, size_threshold=1024
    )
    (staged / WEIGHTS_FILE).replace(graph.parent / WEIGHTS_FILE)
    (staged / GRAPH_FILE).replace(graph)
