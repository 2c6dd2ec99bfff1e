"""The opt-in int8 graph (QUANTIZATION=int8): SmoothQuant, then ONNX Runtime dynamic int8 on the MatMuls it can take.

Plain dynamic int8 (`quantize_dynamic`, whatever its options) reached a minimum cosine of only 0.30-0.74 against fp32
on mpnet: its activations are quantized per tensor, and a few input channels of the feed-forward layers carry values
of 40-100 against a median of ~0.1, so one scale per tensor rounds most of them to zero. SmoothQuant moves that range
into the weights, per input channel: for each group of weight MatMuls reading one activation A (query, key and value
read one), with calibration maxima a_k = max|A[..., k]| and weight maxima w_k = max|W[k, :]|,
s_k = a_k^alpha / w_k^(1 - alpha); a Mul computes A / s once and the weights become diag(s) W, the same function in
fp32. The feed-forward output projections (weights taller than wide: they read the GELU output, whose outliers
smoothing cannot tame) stay fp32; every other weight MatMul is quantized, int8 weights per output channel.
Measured on mpnet (2-core Xeon, AVX512-VNNI): minimum cosine 0.9955 on the check texts and 0.996 on 290 held-out
texts, 1.4-1.6x the speed of fp32 (benchmarks/backends.py measures it). On an AMD EPYC with AVX2 and no VNNI the
same graph reached 0.9944 on the check texts (ONNX Runtime's int8 kernels differ), below the default floor.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

ALPHA_SQUARE = 0.85  # attention projections (d x d weights)
ALPHA_WIDE = 0.75  # feed-forward input projections (d x 4d)
SCALE_RANGE = (1e-2, 1e3)
CALIBRATION_FILE = Path(__file__).with_name("int8_calibration.json")

Tokenize = Callable[[Sequence[str]], dict[str, np.ndarray]]


def calibration_texts() -> list[str]:
    """The texts whose activation ranges set the smoothing (int8_calibration.json: 96 names, sentences, numbers,
    code, eleven languages and paragraphs of up to ~450 words; none of them a check text). Texts drawn at random
    from the vocabulary gave a lower agreement (0.993 on mpnet's check texts, against 0.997)."""
    texts: list[str] = json.loads(CALIBRATION_FILE.read_text(encoding="utf-8"))
    return texts


def build_int8(graph: Path, target: Path, tokenize: Tokenize, texts: Sequence[str]) -> None:
    """Write the smoothed, quantized graph of the fp32 `graph` (external weights beside it) to `target`."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    work = Path(tempfile.mkdtemp(prefix=".int8-", dir=graph.parent))
    try:
        maxima = _activation_maxima(graph, work, tokenize, texts)
        model = onnx.load(str(graph))
        quantized = _smooth(model, maxima)
        if not quantized:  # an empty list would tell quantize_dynamic to take every MatMul
            raise RuntimeError(f"{graph}: no weight MatMul to smooth and quantize")
        smoothed = work / "smoothed.onnx"
        onnx.save_model(model, str(smoothed), save_as_external_data=True, location="smoothed.data")
        del model
        log.info("quantizing %d of the graph's weight MatMuls to int8", len(quantized))
        quantize_dynamic(
            str(smoothed),
            str(target),
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=quantized,
            per_channel=True,
            weight_type=QuantType.QInt8,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _activation_maxima(graph: Path, work: Path, tokenize: Tokenize, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Per input channel, the largest |value| each weight MatMul's activation input takes over `texts` (one text
    per call, so no padding row counts)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(graph), load_external_data=False)
    weights = {tensor.name for tensor in model.graph.initializer}
    inputs = sorted({n.input[0] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights})
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in inputs)
    probe = graph.parent / f"{work.name}.probe.onnx"  # beside the graph: its weights file is found by name
    onnx.save_model(model, str(probe))
    try:
        session = ort.InferenceSession(str(probe), providers=["CPUExecutionProvider"])
        maxima: dict[str, np.ndarray] = {}
        for text in texts:
            for name, value in zip(inputs, session.run(inputs, tokenize([text])), strict=True):
                peak = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
                maxima[name] = np.maximum(maxima[name], peak) if name in maxima else peak
        return maxima
    finally:
        probe.unlink(missing_ok=True)


def _smooth(model: onnx.ModelProto, maxima: dict[str, np.ndarray]) -> list[str]:
    """Smooth `model` in place; returns the names of the MatMuls to quantize (all smoothed ones)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in initializers and node.input[0] in maxima:
            rows, columns = initializers[node.input[1]].dims
            if rows <= columns:  # taller-than-wide weights (feed-forward outputs) stay fp32
                groups.setdefault(node.input[0], []).append(node)
    quantized: list[str] = []
    muls: list[tuple[list[onnx.NodeProto], onnx.NodeProto]] = []
    for activation, nodes in groups.items():
        weights = [numpy_helper.to_array(initializers[n.input[1]]) for n in nodes]
        rows, columns = weights[0].shape
        alpha = ALPHA_SQUARE if rows == columns else ALPHA_WIDE
        weight_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        scale = np.maximum(maxima[activation], 1e-5) ** alpha / np.maximum(weight_max, 1e-5) ** (1 - alpha)
        scale = np.clip(scale, *SCALE_RANGE).astype(np.float32)
        inverse, smoothed = f"{activation}_smooth_inverse", f"{activation}_smoothed"
        graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inverse))
        muls.append((nodes, helper.make_node("Mul", [activation, inverse], [smoothed], name=f"{activation}_smooth")))
        for node, weight in zip(nodes, weights, strict=True):
            tensor = initializers[node.input[1]]
            tensor.CopyFrom(numpy_helper.from_array((weight * scale[:, None]).astype(np.float32), tensor.name))
            node.input[0] = smoothed
            quantized.append(node.name)
    order = list(graph.node)
    for nodes, mul in muls:  # each Mul right before the first MatMul reading it: still in topological order
        order.insert(min(order.index(n) for n in nodes), mul)
    del graph.node[:]
    graph.node.extend(order)
    return quantized
