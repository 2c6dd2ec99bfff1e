"""Loader for the real model: provisions verified weights, builds the configured inference backend (torch, ONNX
Runtime, OpenVINO; fp16 / int8 when asked) and serves it only if it agrees with torch fp32. torch and the runtimes
are imported only when `load()` runs, in a worker thread."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Literal

from adapters.backend_artifacts import cached_reference, current_export, store_reference
from adapters.tokenizer_rules import text_key_rule
from domain.model import BACKEND_CHECK_TEXTS, EmbedInput, ModelInfo, ModelSpec, Vectors
from domain.ports import Embedder, ModelProvisioner
from domain.services import check_agreement, embed_by_length

log = logging.getLogger(__name__)

InferenceBackend = Literal["auto", "torch", "onnx", "openvino"]
Precision = Literal["auto", "fp32", "fp16"]
Quantization = Literal["none", "int8"]


class SentenceTransformerLoader:
    """Provisions verified weights, loads them on the configured backend and pre-warms the model.

    Anything other than torch fp32 (ONNX Runtime, OpenVINO, fp16, int8) must reproduce the torch fp32 vectors of
    BACKEND_CHECK_TEXTS at cosine >= `min_cosine` (`int8_min_cosine` for the opt-in int8 graph) or the load fails
    (BackendDisagrees) and nothing is served.
    """

    def __init__(
        self,
        spec: ModelSpec,
        provisioner: ModelProvisioner,
        device: str = "auto",
        backend: InferenceBackend = "auto",
        precision: Precision = "auto",
        quantization: Quantization = "none",
        min_cosine: float = 0.9999,
        int8_min_cosine: float = 0.995,
        trust_remote_code: bool = False,
    ) -> None:
        if spec.trust_remote_code and not trust_remote_code:
            raise ValueError(
                f"{spec.name} runs code from its repository; serve it only with MODEL_TRUST_REMOTE_CODE=true"
            )
        if quantization == "int8" and backend not in ("auto", "onnx"):
            raise ValueError("QUANTIZATION=int8 is available with INFERENCE_BACKEND=onnx only")
        if precision == "fp16" and backend not in ("auto", "torch"):
            raise ValueError("PRECISION=fp16 is available with INFERENCE_BACKEND=torch (on a GPU) only")
        self._spec = spec
        self._provisioner = provisioner
        self._device = device
        self._backend = backend
        self._precision = precision
        self._quantization = quantization
        self._min_cosine = min_cosine
        self._int8_min_cosine = int8_min_cosine

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def backend(self) -> InferenceBackend:
        """The backend `auto` stands for: torch on a CUDA GPU (or with fp16 asked for), ONNX Runtime on a CPU."""
        if self._backend != "auto":
            return self._backend
        if self._precision == "fp16" or self._device.startswith(("cuda", "mps")):
            return "torch"
        if self._device == "auto" and Path("/dev/nvidiactl").exists():  # an NVIDIA driver: ask torch about CUDA
            from adapters import sentence_transformer_embedder as st

            return "torch" if st.pick_device("auto").startswith("cuda") else "onnx"
        return "onnx"

    def load(self) -> Embedder:
        """The embedder, reporting how its tokenizer lets cache keys be normalized."""
        backend = self.backend()
        if self._quantization == "int8" and backend != "onnx":  # auto may stand for torch (a GPU)
            raise ValueError(f"QUANTIZATION=int8 is available with INFERENCE_BACKEND=onnx only, not {backend}")
        path = self._provisioner.ensure(self._spec)
        embedder = self._load(backend, path)
        return _WithInfo(embedder, dataclasses.replace(embedder.info, text_key=text_key_rule(path / "tokenizer.json")))

    def _load(self, backend: InferenceBackend, path: Path) -> Embedder:
        if backend == "torch":
            from adapters import sentence_transformer_embedder as st

            device = st.pick_device(self._device)
            fp16 = self._precision == "fp16" or (self._precision == "auto" and device.startswith("cuda"))
            embedder = st.load_sentence_transformer(self._spec, str(path), device, fp16=fp16)
            return self._checked(embedder, "torch fp16", path) if fp16 else embedder

        from adapters.onnx_backends import onnx_device, onnxruntime_embedder, openvino_embedder, quantize_int8

        graph = current_export(self._spec, path)
        if graph is None:
            from adapters.sentence_transformer_embedder import export_onnx

            log.info("exporting %s to ONNX once (stored in %s)", self._spec.name, path)
            graph = export_onnx(self._spec, path)
        precision = "fp32"
        if self._quantization == "int8":
            graph, precision = quantize_int8(graph, path, self._spec.max_seq_length), "int8"
        info = ModelInfo(
            spec=self._spec,
            library_version=version("sentence-transformers"),
            device=onnx_device(self._device) if backend == "onnx" else "cpu",
            backend=backend,
            precision=precision,
        )
        runtime = onnxruntime_embedder if backend == "onnx" else openvino_embedder
        return self._checked(runtime(graph, path, info), f"{backend} {precision}", path)

    def _checked(self, embedder: Embedder, name: str, path: Path) -> Embedder:
        texts = list(BACKEND_CHECK_TEXTS)
        key = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
        reference = cached_reference(self._spec, path, key, len(texts))
        if reference is None:
            from adapters.sentence_transformer_embedder import reference_vectors

            reference = reference_vectors(self._spec, path, texts)
            store_reference(self._spec, path, key, reference)
        # a few texts per call: the check should not set the process's memory high-water mark
        vectors = embed_by_length(embedder, texts, batch_size=4)
        floor = self._int8_min_cosine if embedder.info.precision == "int8" else self._min_cosine
        lowest = check_agreement(name, vectors, reference, floor)
        log.info("backend %s agrees with torch fp32: minimum cosine %.6f over %d texts", name, lowest, len(texts))
        return _WithInfo(embedder, dataclasses.replace(embedder.info, min_cosine_vs_torch=lowest))


class _WithInfo:
    """An embedder reporting the agreement measured for it."""

    def __init__(self, inner: Embedder, info: ModelInfo) -> None:
        self._inner: Embedder = inner._inner if isinstance(inner, _WithInfo) else inner
        self._info = info

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def vocabulary_size(self) -> int:
        return self._inner.vocabulary_size

    @property
    def special_token_ids(self) -> frozenset[int]:
        return self._inner.special_token_ids

    def embed(self, texts: Sequence[EmbedInput]) -> Vectors:
        return self._inner.embed(texts)

    def token_counts(self, texts: Sequence[EmbedInput]) -> list[int]:
        return self._inner.token_counts(texts)
