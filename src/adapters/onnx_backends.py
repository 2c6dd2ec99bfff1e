"""ONNX Runtime and OpenVINO backends: the exported sentence-transformers pipeline, run without torch.

sentence-transformers' own `backend="onnx"/"openvino"` needs optimum-onnx / optimum-intel, which pin transformers
below 5 and cannot be installed beside sentence-transformers 6. So the model's own SentenceTransformer modules
(transformer, mean pooling, normalization) are traced into one ONNX graph (`export_onnx` in the torch adapter),
stored beside the verified weights as MODEL_PATH/<name>/onnx/model.onnx, and run here by ONNX Runtime or OpenVINO
with the model's own tokenizer. The loader serves one only after it agrees with torch on a fixed text set.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adapters.backend_artifacts import INT8_GRAPH_FILE, atomic_target
from adapters.token_counting import TokenCounter
from domain.model import EmbedInput, ModelInfo, Vectors

log = logging.getLogger(__name__)


def quantize_int8(graph: Path, model_dir: Path, max_length: int) -> Path:
    """The opt-in int8 graph beside the fp32 one, built once (SmoothQuant + dynamic int8: see int8_quantization)."""
    target = graph.parent / INT8_GRAPH_FILE
    if target.is_file() and target.stat().st_mtime >= graph.stat().st_mtime:
        return target
    from adapters.int8_quantization import build_int8, calibration_texts

    log.info("building the int8 graph of %s once (calibration and quantization, about a minute)", graph)
    tokenizer = GraphTokenizer(model_dir, max_length)
    texts = calibration_texts()
    staging = atomic_target(target)
    try:
        build_int8(graph, staging, tokenizer.encode, texts)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    staging.replace(target)
    return target


class GraphTokenizer:
    """The model's own fast tokenizer (tokenizer.json, via `tokenizers`: no transformers, hence no torch import),
    truncating at the model's limit and padding to the longest text of a call."""

    def __init__(self, model_dir: Path, max_length: int) -> None:
        from tokenizers import Tokenizer

        pad = json.loads((model_dir / "tokenizer_config.json").read_text())["pad_token"]
        pad = pad["content"] if isinstance(pad, dict) else pad
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length=max_length)
        self._tokenizer.enable_padding(pad_id=self._tokenizer.token_to_id(pad), pad_token=pad)

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        encoded = self._tokenizer.encode_batch(list(texts))
        return {
            "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
        }


class ExportedGraphEmbedder:
    """The exported graph behind a runtime (`run`: tokenized inputs -> sentence embeddings), as an Embedder."""

    def __init__(self, run: Callable[[dict[str, np.ndarray]], np.ndarray], model_dir: Path, info: ModelInfo) -> None:
        self._run = run
        self._tokenizer = GraphTokenizer(model_dir, info.spec.max_seq_length)
        self._counter = TokenCounter(model_dir / "tokenizer.json", info.spec.max_seq_length)
        self._info = info

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
        if all(isinstance(text, str) for text in texts):
            inputs = self._tokenizer.encode(texts)  # type: ignore[arg-type]
        else:
            inputs = self._counter.padded(texts)
        return np.ascontiguousarray(self._run(inputs), dtype=np.float32)

    def token_counts(self, texts: Sequence[EmbedInput]) -> list[int]:
        return self._counter.counts(texts)


def onnxruntime_embedder(graph: Path, model_dir: Path, info: ModelInfo) -> ExportedGraphEmbedder:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if info.device.startswith("cuda"):  # onnx_device() said cuda only where the provider is installed
        providers.insert(0, "CUDAExecutionProvider")
    session: Any = ort.InferenceSession(str(graph), providers=providers)
    return ExportedGraphEmbedder(lambda inputs: session.run(["sentence_embedding"], inputs)[0], model_dir, info)


def openvino_compiled(graph: Path) -> Any:
    """The graph compiled for OpenVINO's CPU plugin, computing in f32 as exported: on CPUs with bf16 units
    (AVX512_BF16, AMX) OpenVINO otherwise computes in bf16, which missed the agreement floor (minimum cosine 0.99985
    on mpnet) and ran at 0.6x the speed of f32 on such a CPU here."""
    import openvino

    return openvino.Core().compile_model(str(graph), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def openvino_embedder(graph: Path, model_dir: Path, info: ModelInfo) -> ExportedGraphEmbedder:
    compiled = openvino_compiled(graph)
    return ExportedGraphEmbedder(lambda inputs: compiled(inputs)[0], model_dir, info)


def onnx_device(requested: str) -> str:
    """Where ONNX Runtime runs: CUDA when asked for (or `auto`) and its provider is installed, else the CPU."""
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if requested == "auto":
        return "cuda" if has_cuda else "cpu"
    return requested if requested.startswith("cuda") and has_cuda else "cpu"
