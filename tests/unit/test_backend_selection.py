"""Which inference backend the settings select, and the agreement rule every non-reference backend must pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adapters.model_provisioning import VerifiedModelProvisioner
from adapters.sentence_transformer_loader import SentenceTransformerLoader
from domain.errors import BackendDisagrees
from domain.model import KNOWN_MODELS
from domain.services import check_agreement

SPEC = KNOWN_MODELS["all-MiniLM-L6-v2"]


def loader(**settings: str) -> SentenceTransformerLoader:
    return SentenceTransformerLoader(SPEC, VerifiedModelProvisioner(Path("unused"), []), **settings)  # type: ignore[arg-type]


@pytest.mark.skipif(Path("/dev/nvidiactl").exists(), reason="a GPU machine resolves auto to torch")
def test_auto_is_onnx_on_a_cpu_and_torch_where_a_gpu_or_fp16_is_asked_for() -> None:
    assert loader().backend() == "onnx"
    assert loader(device="cpu").backend() == "onnx"
    assert loader(device="cuda:0").backend() == "torch"
    assert loader(precision="fp16").backend() == "torch"
    for explicit in ("torch", "onnx", "openvino"):
        assert loader(backend=explicit, device="cpu").backend() == explicit


def test_impossible_combinations_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="int8"):
        loader(backend="torch", quantization="int8")
    with pytest.raises(ValueError, match="fp16"):
        loader(backend="openvino", precision="fp16")


def test_int8_is_refused_where_auto_stands_for_torch() -> None:
    with pytest.raises(ValueError, match=r"int8 .* not torch"):
        loader(device="cuda:0", quantization="int8").load()


def unit_rows(rows: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, 8)).astype(np.float32)
    normalized: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return normalized


def test_agreement_is_the_smallest_row_cosine() -> None:
    reference = unit_rows(5, 1)
    assert check_agreement("onnx fp32", reference.copy(), reference, 0.9999) == pytest.approx(1.0, abs=1e-6)
    candidate = reference.copy()
    candidate[3] = unit_rows(1, 2)[0]
    expected = float(candidate[3] @ reference[3])
    with pytest.raises(BackendDisagrees) as refused:
        check_agreement("onnx int8", candidate, reference, 0.9999)
    assert refused.value.details == {"backend": "onnx int8", "min_cosine": pytest.approx(expected), "required": 0.9999}
    assert check_agreement("onnx int8", candidate, reference, expected - 1e-6) == pytest.approx(expected)


def test_wrong_shapes_or_nan_never_agree() -> None:
    reference = unit_rows(4, 3)
    with pytest.raises(BackendDisagrees):
        check_agreement("x", reference[:3], reference, 0.5)
    broken = reference.copy()
    broken[0] = np.nan
    with pytest.raises(BackendDisagrees):
        check_agreement("x", broken, reference, 0.5)
