"""ONNX Runtime and OpenVINO backends on the real MiniLM weights: served only when they agree with torch fp32."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sentence_transformers import SentenceTransformer

from adapters.model_provisioning import VerifiedModelProvisioner
from adapters.sentence_transformer_loader import SentenceTransformerLoader
from domain.errors import BackendDisagrees
from domain.model import BACKEND_CHECK_TEXTS, KNOWN_MODELS, TokenIds
from domain.services import embed_by_length
from entrypoints.http.app import create_app
from tests.support import AUTH, MODEL_ROOT, model_dir, real_model_settings, wait_ready

pytestmark = pytest.mark.integration

MINILM = KNOWN_MODELS["all-MiniLM-L6-v2"]
# other texts than the start-up check uses, so the check is not graded on its own questions
TEXTS = [
    "Open-air cinema on the pier, Friday 21:00",
    "Board games evening at the library",
    "Kammerkonzert im Rathaus — Eintritt frei",
    "",
    "x " * 500,
    "Weekly running club: 5 km loop around the lake, all paces welcome, meet at the boathouse at 7.",
]


def loader(
    backend: str,
    quantization: str = "none",
    min_cosine: float = 0.9999,
    spec: Any = None,
    int8_min_cosine: float = 0.995,
) -> SentenceTransformerLoader:
    spec = spec or MINILM
    model_dir(spec.name)
    return SentenceTransformerLoader(
        spec,
        VerifiedModelProvisioner(MODEL_ROOT, sources=[]),
        device="cpu",
        backend=backend,  # type: ignore[arg-type]
        quantization=quantization,  # type: ignore[arg-type]
        min_cosine=min_cosine,
        int8_min_cosine=int8_min_cosine,
    )


def torch_vectors(texts: list[str]) -> np.ndarray:
    model = SentenceTransformer(str(model_dir(MINILM.name)), device="cpu")
    vectors: np.ndarray = model.encode(texts, normalize_embeddings=True)
    return vectors


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_openvino_computes_in_f32_as_exported_even_on_a_cpu_with_bf16_units() -> None:
    """OpenVINO's CPU plugin picks bf16 by itself where the CPU has bf16 units (this development machine has
    AVX512_BF16): mpnet then reached only 0.99985 against torch, below the agreement floor, at 0.6x the speed."""
    import openvino

    from adapters.onnx_backends import openvino_compiled

    loader("onnx").load()  # the export exists from here on
    compiled = openvino_compiled(model_dir(MINILM.name) / "onnx" / "model.onnx")
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_backend_vectors_match_torch(backend: str) -> None:
    embedder = loader(backend).load()
    info = embedder.info
    assert (info.backend, info.precision) == (backend, "fp32")
    assert info.min_cosine_vs_torch is not None and info.min_cosine_vs_torch >= 0.9999
    vectors = embedder.embed(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), MINILM.dimension)
    assert cosines(vectors, torch_vectors(TEXTS)).min() >= 0.9999
    # the same tokenizer counts the same tokens as torch's, truncation included
    counts = embedder.token_counts(TEXTS)
    assert counts[3] == 2 and counts[4] == MINILM.max_seq_length


MPNET = KNOWN_MODELS["all-mpnet-base-v2"]
HELD_OUT = [  # none of them a check text
    "Maria García, Northwind Traders, maria@northwind.example, +34 600 000 000",
    "Reschedule the supplier audit in Kraków to next Tuesday at 9am",
    "The committee approved the proposal after a long debate about costs and timelines.",
    "Wir treffen uns morgen früh am Hauptbahnhof in München.",
    "我们下周三在上海和供应商开会。",
    "SELECT id, name FROM users WHERE created_at > '2024-01-01' ORDER BY name;",
    "Engineers traced the outage to a misconfigured load balancer in the secondary region. " * 6,
    "🚀 launch day! 🎉",
    "42",
    "Weekly running club: 5 km loop around the lake, all paces welcome, meet at the boathouse at 7.",
    "Der Vertrag muss bis Freitag unterschrieben zurückgeschickt werden, sonst verfällt das Angebot.",
    "kubectl get pods -n production -o wide | grep CrashLoopBackOff",
    "Note " + " ".join(f"item {i}: follow up with the vendor about invoice {1000 + i}." for i in range(40)),
]


def has_vnni() -> bool:
    """Whether this CPU multiplies int8 with VNNI (AVX512-VNNI or AVX-VNNI). ONNX Runtime's int8 kernels differ
    with it: mpnet's SmoothQuant graph reached 0.9955 on the check texts on a Xeon with VNNI and 0.9944 on an AVX2
    EPYC without it."""
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    return bool({"avx512_vnni", "avx_vnni"} & set(flags.split()))


INT8_FLOOR_ANY_CPU = 0.99  # what SmoothQuant int8 reaches on mpnet on any x86-64 CPU tested (the lowest: 0.9944)


def test_the_int8_graph_agrees_with_torch_on_mpnet() -> None:
    """SmoothQuant + dynamic int8 (plain dynamic int8 reached only 0.51 on mpnet): close to fp32 on the check texts,
    and as close on texts it was neither calibrated nor checked on. Its default floor (INT8_MIN_COSINE, 0.995) is
    met with VNNI; without it the gate measures less and refuses it (the next test), so this one loads it under
    the floor every CPU tested reaches."""
    embedder = loader("onnx", "int8", spec=MPNET, int8_min_cosine=INT8_FLOOR_ANY_CPU).load()
    info = embedder.info
    assert (info.backend, info.precision) == ("onnx", "int8")
    floor = 0.995 if has_vnni() else INT8_FLOOR_ANY_CPU
    assert info.min_cosine_vs_torch is not None and info.min_cosine_vs_torch >= floor
    reference = SentenceTransformer(str(model_dir(MPNET.name)), device="cpu").encode(
        HELD_OUT, normalize_embeddings=True
    )
    # by length, a few at a time, as the service batches them: int8 activations are quantized per call
    assert cosines(embed_by_length(embedder, HELD_OUT, batch_size=4), reference).min() >= floor


def test_int8_is_served_only_at_or_above_its_floor() -> None:
    """The gate measures the int8 graph on the CPU it runs on: above the floor it is served, below it refused with
    the cosine it reached (a 0.9999 floor is above what int8 reaches on any CPU)."""
    with pytest.raises(BackendDisagrees) as refused:
        loader("onnx", "int8", spec=MPNET, int8_min_cosine=0.9999).load()
    reached = refused.value.min_cosine
    assert INT8_FLOOR_ANY_CPU <= reached < 0.9999 and refused.value.required == 0.9999
    try:
        served = loader("onnx", "int8", spec=MPNET).load()  # the default floor, 0.995
    except BackendDisagrees as exc:
        assert (exc.min_cosine, exc.required) == (reached, 0.995) and reached < 0.995
        assert not has_vnni()  # with VNNI the default floor is met
    else:
        assert served.info.min_cosine_vs_torch == reached >= 0.995


def test_service_on_onnx_reports_its_backend_and_serves_torch_equal_vectors() -> None:
    settings = real_model_settings(MINILM.name, inference_backend="onnx")
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        metadata = client.get("/metadata", headers=AUTH).json()
        assert (metadata["backend"], metadata["precision"]) == ("onnx", "fp32")
        assert metadata["min_cosine_vs_torch"] >= 0.9999
        response = client.post("/embed", json={"texts": TEXTS}, headers=AUTH)
        assert response.status_code == 200
        served = np.array(response.json()["embeddings"], dtype=np.float32)
        assert cosines(served, torch_vectors(TEXTS)).min() >= 0.9999


def test_check_texts_cover_truncation_and_empty_input() -> None:
    counts = loader("onnx").load().token_counts(list(BACKEND_CHECK_TEXTS))
    assert min(counts) == 2 and max(counts) == MINILM.max_seq_length


def test_a_prepared_onnx_service_never_imports_torch() -> None:
    loader("onnx").load()  # export and reference exist from here on
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from adapters.model_provisioning import VerifiedModelProvisioner\n"
        "from adapters.sentence_transformer_loader import SentenceTransformerLoader\n"
        "from domain.model import KNOWN_MODELS\n"
        f"root = Path({str(MODEL_ROOT)!r})\n"
        "spec = KNOWN_MODELS['all-MiniLM-L6-v2']\n"
        "loader = SentenceTransformerLoader(spec, VerifiedModelProvisioner(root, []), device='cpu', backend='onnx')\n"
        "assert loader.load().embed(['x']).shape == (1, 384)\n"
        "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_export_keeps_its_weights_beside_the_graph_and_an_older_one_is_made_again() -> None:
    """ONNX Runtime maps weights kept in an external-data file instead of parsing them into memory with the graph
    (measured: 0.39 GB instead of 0.69 GB at session start-up for mpnet). An export laid out the old way (weights
    inside the graph, a manifest without "weights") is not current: it is made again."""
    from adapters.backend_artifacts import GRAPH_FILE, MANIFEST_FILE, WEIGHTS_FILE, current_export

    loader("onnx").load()
    folder = MODEL_ROOT / MINILM.name / "onnx"
    graph, weights = folder / GRAPH_FILE, folder / WEIGHTS_FILE
    assert graph.stat().st_size < 1_000_000 < 80_000_000 < weights.stat().st_size  # MiniLM: ~90 MB of weights
    assert current_export(MINILM, MODEL_ROOT / MINILM.name) == graph

    manifest = folder / MANIFEST_FILE
    saved = manifest.read_text()
    old = json.loads(saved)
    del old["weights"]
    manifest.write_text(json.dumps(old))
    try:
        assert current_export(MINILM, MODEL_ROOT / MINILM.name) is None
        assert loader("onnx").load().embed(["again"]).shape == (1, MINILM.dimension)  # exported again
        assert json.loads(manifest.read_text()) == json.loads(saved)
        assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no staging left behind
    finally:
        if current_export(MINILM, MODEL_ROOT / MINILM.name) is None:
            manifest.write_text(saved)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_counting_tokens_while_the_model_runs_disturbs_neither(backend: str) -> None:
    """Admission counts tokens on the event loop and in helper threads while the inference thread embeds: the two
    must not share a tokenizer that a call reconfigures (transformers sets padding and truncation per call)."""
    import threading

    embedder = loader(backend).load()
    texts = [f"event {i}: " + "word " * (i % 50) for i in range(16)]
    expected_counts = embedder.token_counts(texts)
    expected_vectors = embedder.embed(texts)
    failures: list[str] = []
    stop = threading.Event()

    def count() -> None:
        while not stop.is_set():
            try:
                if embedder.token_counts(texts) != expected_counts:
                    failures.append("counts changed")
            except Exception as exc:
                failures.append(f"counting raised {exc!r}")

    counter = threading.Thread(target=count)
    counter.start()
    for _ in range(8):  # a number of calls, not a time window: a loaded machine makes fewer calls in one
        try:
            vectors = embedder.embed(texts)
            assert cosines(vectors, expected_vectors).min() >= 0.99999
        except Exception as exc:
            failures.append(f"embedding raised {exc!r}")
    stop.set()
    counter.join(10)
    assert failures == []


@pytest.mark.parametrize("backend", ["torch", "onnx", "openvino"])
def test_token_ids_embed_like_the_text_they_encode_with_or_without_special_tokens(backend: str) -> None:
    """OpenAI's token-array input: ids of the model's own tokenizer, as HF tokenizers return them (with [CLS] and
    [SEP]), without them, padded, or too long (truncated like the text), alone or in one call with texts."""
    from tokenizers import Tokenizer

    embedder = loader(backend).load()
    tokenizer = Tokenizer.from_file(str(model_dir(MINILM.name) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    texts = [TEXTS[0], TEXTS[2], TEXTS[4]]  # the last one longer than the model's 256 tokens
    framed = [TokenIds(tuple(tokenizer.encode(t).ids)) for t in texts]
    bare = [TokenIds(tuple(tokenizer.encode(t, add_special_tokens=False).ids)) for t in texts]
    padded = TokenIds((0, 0, *framed[0].ids, 0, 0, 0))  # padding on either side is dropped
    assert len(framed[2]) > MINILM.max_seq_length
    reference = embedder.embed(texts)
    for inputs in (framed, bare, [padded, texts[1], bare[2]]):
        vectors = embedder.embed(inputs)
        assert cosines(vectors, reference).min() >= 0.99999, inputs
    assert embedder.token_counts([*framed, *bare]) == embedder.token_counts(texts) * 2
    assert embedder.token_counts(texts)[2] == MINILM.max_seq_length
    assert embedder.vocabulary_size == 30522


@pytest.mark.parametrize(
    ("name", "specials"), [("all-MiniLM-L6-v2", ((101,), (102,), 0)), ("all-mpnet-base-v2", ((0,), (2,), 1))]
)
def test_each_models_own_special_tokens_frame_token_ids(name: str, specials: tuple[Any, Any, int]) -> None:
    """[CLS]/[SEP] with [PAD]=0 for MiniLM, <s>/</s> with <pad>=1 for mpnet: read from each tokenizer, not assumed."""
    from tokenizers import Tokenizer

    from adapters.token_counting import TokenCounter

    spec = KNOWN_MODELS[name]
    counter = TokenCounter(model_dir(name) / "tokenizer.json", spec.max_seq_length)
    prefix, suffix, pad = specials
    assert (counter.framing.prefix, counter.framing.suffix, counter.framing.pad_id) == (prefix, suffix, pad)
    tokenizer = Tokenizer.from_file(str(model_dir(name) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    text = " ".join(["Jazz night at the harbour with the Lisbon quartet"] * 60)  # over either model's limit
    as_text = counter.ids([text])[0]
    assert len(as_text) == spec.max_seq_length
    for ids in (tokenizer.encode(text).ids, tokenizer.encode(text, add_special_tokens=False).ids):
        assert counter.ids([TokenIds(tuple(ids))])[0] == as_text
        assert counter.ids([TokenIds((pad, *ids, pad))])[0] == as_text
