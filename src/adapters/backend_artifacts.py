"""Files derived from verified weights and kept beside them: the ONNX export and the torch fp32 reference vectors.

Reading them needs neither torch nor sentence-transformers, so a service on ONNX Runtime or OpenVINO whose export
and reference already exist never imports torch (~0.4 GB of memory).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from domain.model import ModelSpec, Vectors

EXPORT_DIR = "onnx"
GRAPH_FILE = "model.onnx"
WEIGHTS_FILE = "model.onnx.data"  # the graph's initializers, kept outside it (ONNX external data)
INT8_GRAPH_FILE = "model_int8_smoothquant.onnx"
MANIFEST_FILE = "export.json"
OPSET = 17


def atomic_target(target: Path) -> Path:
    """A temporary sibling of `target` to write into and then `replace()` it with, so readers never see half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
    os.close(fd)
    return Path(staging)


def export_manifest(spec: ModelSpec) -> dict[str, object]:
    """What an export was made from, and how it is laid out: its weights in WEIGHTS_FILE beside the graph, which
    ONNX Runtime maps from the file instead of parsing them into memory with the graph (~0.3 GB less at start-up
    for mpnet). An export whose manifest differs (older ones kept the weights inside the graph) is made again."""
    return {"weights_sha256": spec.weights_sha256, "opset": OPSET, "weights": WEIGHTS_FILE}


def current_export(spec: ModelSpec, model_dir: Path) -> Path | None:
    """The exported graph if it exists and was made from these weights, else None."""
    graph = model_dir / EXPORT_DIR / GRAPH_FILE
    manifest = model_dir / EXPORT_DIR / MANIFEST_FILE
    if graph.is_file() and manifest.is_file() and json.loads(manifest.read_text()) == export_manifest(spec):
        return graph
    return None


def reference_path(spec: ModelSpec, model_dir: Path, key: str) -> Path:
    return model_dir / ".reference" / f"{spec.weights_sha256[:16]}-{key}.npy"


def cached_reference(spec: ModelSpec, model_dir: Path, key: str, count: int) -> Vectors | None:
    path = reference_path(spec, model_dir, key)
    if not path.is_file():
        return None
    vectors: Vectors = np.load(path)
    return vectors if vectors.shape == (count, spec.dimension) else None


def store_reference(spec: ModelSpec, model_dir: Path, key: str, vectors: Vectors) -> None:
    path = reference_path(spec, model_dir, key)
    staging = atomic_target(path)
    with staging.open("wb") as fh:
        np.save(fh, vectors)
    staging.replace(path)
