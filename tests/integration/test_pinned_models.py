"""Real weights served by pin: a tiny random BERT pinned in a lock file is served (ONNX Runtime, past the agreement
gate) with its prompts and Matryoshka sizes, and the real mpnet and MiniLM served together by one process give the
vectors each gives alone."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from adapters.model_lock import write_entry
from domain.model import ModelSpec, PinnedFile
from entrypoints.http.app import create_app
from tests.support import AUTH, fake_settings, model_dir, real_model_settings, wait_ready
from tests.tiny_model import TINY_DIMENSION, TINY_MATRYOSHKA, TINY_MAX_SEQ_LENGTH, TINY_PROMPTS, save_tiny_model

TEXTS = ["jazz night at the harbour", "Ada Lovelace, ACME Corp", "farmers market on the pier", "hello world"]


def pin_folder(folder: Path, name: str) -> ModelSpec:
    """The lock entry `models add` records for a folder: every file with its sha256 and size."""
    files = tuple(
        PinnedFile(
            path.relative_to(folder).as_posix(), hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size
        )
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    )
    return ModelSpec(
        name=name,
        hub_id=f"tests/{name}",
        revision="1" * 40,
        files=files,
        dimension=TINY_DIMENSION,
        max_seq_length=TINY_MAX_SEQ_LENGTH,
        matryoshka_dimensions=tuple(size for size in TINY_MATRYOSHKA if size < TINY_DIMENSION),
        prompts=tuple(sorted(TINY_PROMPTS.items())),
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, ModelSpec]]:
    root = tmp_path_factory.mktemp("pinned")
    models = root / "models"
    spec = pin_folder(save_tiny_model(models / "tiny-bert"), "tiny-bert")
    lock = root / "models.lock.json"
    write_entry(lock, spec)
    yield models, lock, spec


def pinned_settings(spec: ModelSpec, models: Path, lock: Path, **overrides: Any) -> Any:
    """The real loader serving the pinned model from `models` (no built-in model needed)."""
    values = {"model_name": spec.name, "model_path": models, "models_lock": lock, "hf_hub_offline": True}
    return fake_settings(
        embedder_backend="sentence_transformers", device="cpu", timeout_seconds=60, **values, **overrides
    )


def reference(folder: Path, texts: list[str], prompt_name: str) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    return np.asarray(model.encode(texts, prompt_name=prompt_name, normalize_embeddings=True), dtype=np.float32)


def post(client: TestClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_a_pinned_model_is_served_with_its_prompts_and_matryoshka_sizes(
    tiny: tuple[Path, Path, ModelSpec], backend: str
) -> None:
    models, lock, spec = tiny
    folder = models / spec.name
    settings = pinned_settings(spec, models, lock, inference_backend=backend)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        meta = client.get("/metadata", headers=AUTH).json()["models"][0]
        assert (meta["model"], meta["backend"], meta["prompts"]) == (spec.name, backend, TINY_PROMPTS)
        assert backend == "torch" or meta["min_cosine_vs_torch"] >= 0.9999  # the agreement gate ran
        for input_type, prompt_name in (("query", "query"), ("document", "document")):
            served = post(client, "/v1/embed/batch", {"texts": TEXTS, "input_type": input_type})["embeddings"]
            np.testing.assert_allclose(np.asarray(served), reference(folder, TEXTS, prompt_name), atol=2e-5)
        # token ids of a text get the prompt's tokens after the leading [CLS]: the text's vector, prompt and all
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        for input_type in ("query", "document"):
            ids = [tokenizer.encode(text).ids for text in TEXTS]
            by_ids = post(client, "/v1/embeddings", {"input": ids, "input_type": input_type})["data"]
            by_text = post(client, "/v1/embeddings", {"input": TEXTS, "input_type": input_type})["data"]
            np.testing.assert_allclose(
                [row["embedding"] for row in by_ids], [row["embedding"] for row in by_text], atol=2e-6
            )
        query = post(client, "/v1/embeddings", {"input": TEXTS[0], "input_type": "query", "dimensions": 16})
        short = np.asarray(query["data"][0]["embedding"])
        full = reference(folder, TEXTS[:1], "query")[0]
        np.testing.assert_allclose(short, full[:16] / np.linalg.norm(full[:16]), atol=2e-5)
        assert client.post("/v1/embeddings", json={"input": "x", "dimensions": 12}, headers=AUTH).status_code == 400


def test_a_pinned_model_whose_files_differ_from_its_pin_is_not_served(
    tiny: tuple[Path, Path, ModelSpec], tmp_path: Path
) -> None:
    _, lock, spec = tiny
    tampered_root = tmp_path / "models"
    save_tiny_model(tampered_root / spec.name, seed=1)  # the same layout, other weights
    settings = pinned_settings(spec, tampered_root, lock)
    with TestClient(create_app(settings)) as client:
        for _ in range(200):
            health = client.get("/health").json()
            if health["status"] != "loading":
                break
            time.sleep(0.05)
        assert health["status"] == "error"
        refused = client.post("/v1/embed", json={"text": "x"}, headers=AUTH)
        assert refused.status_code == 503


def test_mpnet_and_minilm_served_together_give_the_vectors_each_gives_alone() -> None:
    texts = [*TEXTS, "Été à Paris — café et musées", "Встреча с клиентом в пятницу"]  # noqa: RUF001

    def vectors(settings: Any, models: list[str]) -> dict[str, np.ndarray]:
        with TestClient(create_app(settings)) as client:
            wait_ready(client, timeout_s=600)
            served = client.get("/metadata", headers=AUTH).json()["models"]
            assert [m["model"] for m in served] == models
            assert all(m["backend"] == "onnx" and m["min_cosine_vs_torch"] >= 0.9999 for m in served)  # each gated
            return {
                name: np.asarray(post(client, "/v1/embed/batch", {"texts": texts, "model": name})["embeddings"])
                for name in models
            }

    model_dir("all-MiniLM-L6-v2")  # provisioned (real_model_settings provisions the one it names)
    both = vectors(
        real_model_settings("all-mpnet-base-v2", models="all-mpnet-base-v2,all-MiniLM-L6-v2"),
        ["all-mpnet-base-v2", "all-MiniLM-L6-v2"],
    )
    for name in ("all-mpnet-base-v2", "all-MiniLM-L6-v2"):
        alone = vectors(real_model_settings(name), [name])[name]
        assert both[name].shape == alone.shape
        np.testing.assert_allclose(both[name], alone, atol=1e-6)


def test_remote_code_is_run_only_when_trusted_and_only_at_pinned_commits(
    tiny: tuple[Path, Path, ModelSpec], tmp_path: Path
) -> None:
    """The loader refuses a lock entry running code unless MODEL_TRUST_REMOTE_CODE; loading refuses code that lives
    in a repository the entry does not pin, before fetching anything."""
    import dataclasses
    import json
    import shutil

    from adapters.model_provisioning import VerifiedModelProvisioner
    from adapters.sentence_transformer_embedder import open_model
    from adapters.sentence_transformer_loader import SentenceTransformerLoader

    models, _, spec = tiny
    remote = dataclasses.replace(spec, trust_remote_code=True)
    provisioner = VerifiedModelProvisioner(models, [])
    with pytest.raises(ValueError, match="MODEL_TRUST_REMOTE_CODE=true"):
        SentenceTransformerLoader(remote, provisioner)
    SentenceTransformerLoader(remote, provisioner, trust_remote_code=True)  # trusted: accepted

    folder = tmp_path / "nomic-like"
    shutil.copytree(models / spec.name, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "example/bert-code--modeling_x.XModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="runs code from example/bert-code, which its lock entry does not pin"):
        open_model(remote, folder, "cpu")
