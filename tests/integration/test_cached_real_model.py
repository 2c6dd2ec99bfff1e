"""The cache with the real MiniLM behind the events dialect: spellings the tokenizer cannot tell apart share one
entry, and a cached vector is the one the model computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sentence_transformers import SentenceTransformer

from entrypoints.http.app import create_app
from tests.support import AUTH, model_dir, real_model_settings, wait_ready

pytestmark = pytest.mark.integration


def test_equivalent_spellings_share_an_entry_and_match_direct_encode(tmp_path: Path) -> None:
    settings = real_model_settings("all-MiniLM-L6-v2", cache_backend="sqlite", data_dir=tmp_path)
    texts = ["Jazz night at the harbour", "  jazz NIGHT\tat the harbour ", "Farmers market", "[CLS] Farmers market"]
    with TestClient(create_app(settings)) as client:
        wait_ready(client, timeout_s=300)
        first = client.post("/embed", json={"texts": texts}, headers=AUTH)
        assert first.status_code == 200
        assert (first.headers["x-cache-hits"], first.headers["x-cache-hit-indexes"]) == ("0", "")
        vectors = np.array(first.json()["embeddings"], dtype=np.float32)
        np.testing.assert_array_equal(vectors[0], vectors[1])  # one key: computed once
        assert not np.array_equal(vectors[2], vectors[3])  # an added token keeps its text verbatim

        again = client.post(
            "/embed", json={"texts": ["JAZZ NIGHT AT THE HARBOUR", "farmers  market", "new"]}, headers=AUTH
        )
        assert (again.headers["x-cache-hits"], again.headers["x-cache-hit-indexes"]) == ("2", "0,1")
        cached = np.array(again.json()["embeddings"], dtype=np.float32)
        np.testing.assert_array_equal(cached[:2], vectors[[0, 2]])

    direct = SentenceTransformer(str(model_dir("all-MiniLM-L6-v2")), device="cpu").encode(
        ["JAZZ NIGHT AT THE HARBOUR", "farmers  market", "new"], normalize_embeddings=True
    )
    cosines = np.sum(cached * direct, axis=1)
    assert cosines.min() >= 0.99999
