"""The stored form of a cached vector: little-endian float32 bytes, 4 per dimension."""

from __future__ import annotations

import numpy as np

from domain.model import Vector


def to_bytes(vector: Vector) -> bytes:
    array = np.asarray(vector)
    if array.ndim != 1 or array.dtype.kind != "f" or not np.isfinite(array).all():
        raise ValueError("a cached vector must be one row of finite floats")
    return array.astype("<f4").tobytes()


def from_bytes(blob: bytes) -> Vector:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)
