"""`embedding-service models add` and `models pull` of a lock-file model, against a loopback fake hub serving a tiny
random BERT saved as a sentence-transformers model in the test: no network."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from adapters.model_lock import read_lock
from adapters.model_provisioning import VerifiedModelProvisioner
from entrypoints.cli import main
from tests.fake_hub import serve_fake_hub
from tests.tiny_model import TINY_MATRYOSHKA, TINY_PROMPTS, save_tiny_model

HUB_ID = "tiny-org/tiny-embed"
REVISION = "0123456789abcdef0123456789abcdef01234567"
CODE_REPO = "tiny-org/tiny-code"
CODE_REVISION = "89abcdef0123456789abcdef0123456789abcdef"
NAME = "tiny-embed"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """MODEL_PATH and MODELS_LOCK in the test's folder (read by Settings when the command runs)."""
    paths = {"models": tmp_path / "models", "lock": tmp_path / "models.lock.json"}
    monkeypatch.setenv("MODEL_PATH", str(paths["models"]))
    monkeypatch.setenv("MODELS_LOCK", str(paths["lock"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "false")
    for variable in ("MODEL_NAME", "MODELS", "MODEL_TRUST_REMOTE_CODE", "HF_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    return paths


def served_copy(tiny: Path, folder: Path) -> Path:
    """The tiny model as a hub repository holds it: beside files sentence-transformers never reads."""
    shutil.copytree(tiny, folder)
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(b"an onnx export")
    (folder / "pytorch_model.bin").write_bytes(b"the same weights, pickled")
    (folder / "tf_model.h5").write_bytes(b"tensorflow weights")
    (folder / "images").mkdir()
    (folder / "images" / "logo.png").write_bytes(b"\x89PNG")
    return folder


def files_of(folder: Path) -> dict[str, dict[str, object]]:
    return {
        path.relative_to(folder).as_posix(): {
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "size": len(path.read_bytes()),
        }
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def add(monkeypatch: pytest.MonkeyPatch, endpoint: str, *args: str) -> int:
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    return main(["models", "add", *args])


def lock_entries(lock: Path) -> list[dict[str, object]]:
    document = json.loads(lock.read_text())
    assert document["version"] == 1
    return list(document["models"])


def test_add_pins_every_file_and_the_models_own_facts(
    tiny: Path,
    tmp_path: Path,
    env: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with serve_fake_hub(HUB_ID, REVISION, served_copy(tiny, tmp_path / "hub")) as endpoint:
        code = add(monkeypatch, endpoint, HUB_ID, "--revision", REVISION)
        requested = list(serve_fake_hub.requests)  # type: ignore[attr-defined]
    assert code == 0
    [entry] = lock_entries(env["lock"])
    assert json.loads(capsys.readouterr().out) == entry
    assert entry == {
        "name": NAME,
        "hub_id": HUB_ID,
        "revision": REVISION,
        "dimension": 32,
        "max_seq_length": 64,
        "pooling": "mean",
        "prompts": TINY_PROMPTS,
        "matryoshka_dimensions": list(TINY_MATRYOSHKA),
        "trust_remote_code": False,
        "code_revisions": {},
        "files": files_of(tiny),  # every file, the card and the module folders' configs too, none of the others
    }
    assert f"GET /api/models/{HUB_ID}/revision/{REVISION}?blobs=true" in requested
    assert not [line for line in requested if "onnx" in line or ".bin" in line or ".h5" in line or ".png" in line]
    [spec] = read_lock(env["lock"])
    assert VerifiedModelProvisioner(env["models"], []).ensure(spec) == env["models"] / NAME
    assert sorted(path.name for path in env["models"].iterdir()) == [NAME]  # no staging folder left


@pytest.mark.parametrize("revision", ["main", "v1.0", REVISION[:12]])
def test_a_revision_that_is_not_a_full_commit_sha_is_refused(
    revision: str, tiny: Path, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with serve_fake_hub(HUB_ID, revision, tiny) as endpoint:
        code = add(monkeypatch, endpoint, HUB_ID, "--revision", revision)
        requested = list(serve_fake_hub.requests)  # type: ignore[attr-defined]
    assert code == 2
    assert "40-character commit sha" in caplog.text
    assert requested == [] and not env["lock"].exists() and not env["models"].exists()


def test_a_repository_without_a_fast_tokenizer_is_refused_before_its_weights_are_fetched(
    tiny: Path, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    repository = served_copy(tiny, tmp_path / "repository")
    (repository / "tokenizer.json").unlink()
    with serve_fake_hub(HUB_ID, REVISION, repository) as endpoint:
        code = add(monkeypatch, endpoint, HUB_ID, "--revision", REVISION)
        requested = list(serve_fake_hub.requests)  # type: ignore[attr-defined]
    assert code == 2
    assert "has no tokenizer.json at its root" in caplog.text
    assert not any("model.safetensors" in line for line in requested if line.startswith("GET"))
    assert not env["lock"].exists() and not (env["models"] / NAME).exists()


@pytest.mark.parametrize("corrupted", ["model.safetensors", "tokenizer.json"])
def test_a_file_that_differs_from_the_hubs_checksum_is_refused_leaving_nothing(
    corrupted: str,
    tiny: Path,
    env: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with serve_fake_hub(HUB_ID, REVISION, tiny, corrupt={corrupted}) as endpoint:
        code = add(monkeypatch, endpoint, HUB_ID, "--revision", REVISION)
    assert code == 1
    assert f"{corrupted} " in caplog.text and "refusing it" in caplog.text
    assert not env["lock"].exists()
    assert list(env["models"].iterdir()) == []


def with_remote_code(tiny: Path, folder: Path) -> Path:
    """The tiny model whose architecture is code living in another repository, as nomic-embed's is."""
    shutil.copytree(tiny, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": f"{CODE_REPO}--modeling_tiny.TinyBertModel"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def code_repository(folder: Path) -> Path:
    folder.mkdir()
    (folder / "modeling_tiny.py").write_text(
        "from transformers import BertModel\n\n\nclass TinyBertModel(BertModel):\n    pass\n"
    )
    return folder


@dataclass(frozen=True)
class TrustedAdd:
    result: subprocess.CompletedProcess[str]
    requested: list[str]
    lock: Path
    served: Path


@pytest.fixture(scope="module")
def trusted_add(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> TrustedAdd:
    """`models add` of the remote-code model with MODEL_TRUST_REMOTE_CODE=true, in a process of its own: transformers
    fetches the code from HF_ENDPOINT (read when it is imported) into HF_HOME."""
    root = tmp_path_factory.mktemp("trusted")
    model = with_remote_code(tiny, root / "hub")
    more = {CODE_REPO: (CODE_REVISION, code_repository(root / "code"))}
    with serve_fake_hub(HUB_ID, REVISION, model, more_repos=more) as endpoint:
        environment = {
            **os.environ,
            "HF_ENDPOINT": endpoint,
            "HF_HOME": str(root / "hf-home"),
            "HF_HUB_OFFLINE": "false",
            "MODEL_PATH": str(root / "models"),
            "MODELS_LOCK": str(root / "models.lock.json"),
            "MODEL_TRUST_REMOTE_CODE": "true",
        }
        result = subprocess.run(
            [sys.executable, "-m", "entrypoints.cli", "models", "add", HUB_ID, "--revision", REVISION],
            env={k: v for k, v in environment.items() if k not in ("MODEL_NAME", "MODELS")},
            capture_output=True,
            text=True,
            timeout=300,
        )
        requested = list(serve_fake_hub.requests)  # type: ignore[attr-defined]
    return TrustedAdd(result, requested, root / "models.lock.json", model)


def test_remote_code_is_refused_unless_trusted(
    tiny: Path, tmp_path: Path, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = with_remote_code(tiny, tmp_path / "hub")
    more = {CODE_REPO: (CODE_REVISION, code_repository(tmp_path / "code"))}
    with serve_fake_hub(HUB_ID, REVISION, model, more_repos=more) as endpoint:
        assert add(monkeypatch, endpoint, HUB_ID, "--revision", REVISION) == 2
        requested = list(serve_fake_hub.requests)  # type: ignore[attr-defined]
    assert "MODEL_TRUST_REMOTE_CODE=true" in caplog.text and f"{CODE_REPO}--modeling_tiny" in caplog.text
    assert not env["lock"].exists() and list(env["models"].iterdir()) == []
    assert not [line for line in requested if "safetensors" in line or CODE_REPO in line]  # refused before those


def test_trusted_remote_code_is_added_with_the_commit_of_the_repository_its_code_lives_in(
    trusted_add: TrustedAdd,
) -> None:
    assert trusted_add.result.returncode == 0, trusted_add.result.stderr
    [entry] = lock_entries(trusted_add.lock)
    assert entry["trust_remote_code"] is True
    assert entry["code_revisions"] == {CODE_REPO: CODE_REVISION}
    assert entry["files"] == files_of(trusted_add.served)
    assert (entry["dimension"], entry["pooling"]) == (32, "mean")  # loaded, running the remote code
    assert any(f"/{CODE_REPO}/resolve/" in line and "modeling_tiny.py" in line for line in trusted_add.requested)


def test_the_remote_code_of_another_repository_is_loaded_at_its_pinned_commit(trusted_add: TrustedAdd) -> None:
    fetched = [line for line in trusted_add.requested if line.startswith("GET") and "modeling_tiny.py" in line]
    assert fetched == [f"GET /{CODE_REPO}/resolve/{CODE_REVISION}/modeling_tiny.py"]


def test_prompt_overrides_and_matryoshka_sizes_from_the_card_or_the_command_line(
    tiny: Path, tmp_path: Path, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    card_only = shutil.copytree(tiny, tmp_path / "hub")
    settings = card_only / "config_sentence_transformers.json"
    settings.write_text(
        json.dumps({k: v for k, v in json.loads(settings.read_text()).items() if "matryoshka" not in k})
    )
    with (card_only / "README.md").open("a") as card:
        card.write(
            '\n```json\n{\n    "loss": "MultipleNegativesRankingLoss",\n    "matryoshka_dims": [\n        64,\n'
            '        32,\n        24\n    ],\n    "matryoshka_weights": [1, 1, 1]\n}\n```\n'
        )
    with serve_fake_hub(HUB_ID, REVISION, card_only) as endpoint:
        assert add(monkeypatch, endpoint, HUB_ID, "--revision", REVISION, "--query-prompt", "Represent this: ") == 0
        assert add(monkeypatch, endpoint, HUB_ID, "--revision", REVISION, "--matryoshka", "64") == 2  # over 32
    [entry] = lock_entries(env["lock"])
    assert entry["prompts"] == {"query": "Represent this: ", "document": TINY_PROMPTS["document"]}
    assert entry["matryoshka_dimensions"] == [32, 24]  # 64 is more than its dimension


def test_matryoshka_option_and_name_option(
    tiny: Path, tmp_path: Path, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve_fake_hub(HUB_ID, REVISION, tiny) as endpoint:
        args = ("--revision", REVISION, "--matryoshka", "8,16", "--name", "tiny-16", "--document-prompt", "")
        assert add(monkeypatch, endpoint, HUB_ID, *args) == 0
    [entry] = lock_entries(env["lock"])
    assert (entry["name"], entry["matryoshka_dimensions"]) == ("tiny-16", [16, 8])
    assert entry["prompts"] == {"query": TINY_PROMPTS["query"]}
    assert (env["models"] / "tiny-16" / "model.safetensors").is_file()


def test_models_pull_fetches_a_lock_file_model_verified_and_refuses_a_tampered_copy(
    tiny: Path,
    tmp_path: Path,
    env: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    elsewhere = tmp_path / "elsewhere"
    with serve_fake_hub(HUB_ID, REVISION, tiny) as endpoint:
        assert add(monkeypatch, endpoint, HUB_ID, "--revision", REVISION) == 0
        capsys.readouterr()
        assert main(["models", "pull", NAME, "--path", str(elsewhere)]) == 0
        requested = list(serve_fake_hub.requests)  # type: ignore[attr-defined]
    assert capsys.readouterr().out.strip() == str(elsewhere / NAME)
    assert f"GET /{HUB_ID}/resolve/{REVISION}/1_Pooling/config.json" in requested
    assert files_of(elsewhere / NAME) == files_of(tiny)

    tokenizer = elsewhere / NAME / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace("[UNK]", "[UNX]"))
    assert main(["models", "pull", HUB_ID, "--path", str(elsewhere)]) == 1
    assert "tokenizer.json has sha256" in caplog.text and "refusing to load it" in caplog.text


def test_models_pull_of_an_unknown_name_is_refused(env: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    assert main(["models", "pull", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in caplog.text
