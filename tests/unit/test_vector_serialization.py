"""Vectors serialize without per-float Python work, and read back as exactly the same float32 values."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np

from entrypoints.http.responses import VectorJSONResponse


def batch(rows: int = 100, dim: int = 768) -> np.ndarray:
    vectors = np.random.default_rng(7).standard_normal((rows, dim)).astype(np.float32)
    normalized: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return normalized


def body(vectors: np.ndarray) -> dict[str, object]:
    return {"object": "list", "data": [{"id": str(i), "embedding": row} for i, row in enumerate(vectors)]}


def best_of(fn: Callable[[], object], reps: int = 5) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def test_float32_vectors_round_trip_exactly() -> None:
    vectors = batch()
    rendered = VectorJSONResponse(body(vectors)).body
    parsed = json.loads(rendered)
    back = np.array([item["embedding"] for item in parsed["data"]], dtype=np.float32)
    np.testing.assert_array_equal(back, vectors)
    assert [item["id"] for item in parsed["data"]] == [str(i) for i in range(100)]


def test_a_100_by_768_batch_renders_several_times_faster_than_json_of_python_floats() -> None:
    vectors = batch()
    fast = best_of(lambda: VectorJSONResponse(body(vectors)))
    slow = best_of(lambda: json.dumps({"data": [{"embedding": row.tolist()} for row in vectors]}).encode())
    # measured here: ~4 ms against ~90 ms; the margin absorbs a noisy machine
    assert fast * 5 < slow, (fast, slow)
    assert fast < 0.05
