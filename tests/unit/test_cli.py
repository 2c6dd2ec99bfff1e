"""CLI helpers that do not need a model: dev key provisioning for `make run`."""

from __future__ import annotations

from pathlib import Path

import pytest

from entrypoints.cli import main


def test_env_file_is_created_with_a_key_printed_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    template = tmp_path / ".env.example"
    template.write_text("MODEL_NAME=all-mpnet-base-v2\nPEOPLEPAD_CLIENT_KEY=\nEMBEDDING_API_KEY=\n")
    env = tmp_path / ".env"
    args = ["ensure-env-key", "--env-file", str(env), "--template", str(template)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    key = printed.strip().splitlines()[-1].strip()
    assert len(key) >= 40
    assert f"EMBEDDING_API_KEY={key}\n" in env.read_text()
    assert "MODEL_NAME=all-mpnet-base-v2" in env.read_text()
    assert env.stat().st_mode & 0o777 == 0o600
    assert main(args) == 0
    assert capsys.readouterr().out == ""
    assert f"EMBEDDING_API_KEY={key}\n" in env.read_text()


def test_existing_env_without_key_gets_one_and_keeps_its_settings(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("MODEL_NAME=all-MiniLM-L6-v2\n# EMBEDDING_API_KEY=commented-out\n")
    assert main(["ensure-env-key", "--env-file", str(env), "--template", str(tmp_path / "none")]) == 0
    lines = env.read_text().splitlines()
    assert lines[:2] == ["MODEL_NAME=all-MiniLM-L6-v2", "# EMBEDDING_API_KEY=commented-out"]
    assert lines[2].startswith("EMBEDDING_API_KEY=") and len(lines[2]) > 40


def test_env_with_a_peoplepad_key_is_left_alone(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("PEOPLEPAD_CLIENT_KEY=already-set\n")
    assert main(["ensure-env-key", "--env-file", str(env)]) == 0
    assert env.read_text() == "PEOPLEPAD_CLIENT_KEY=already-set\n"


def test_keygen_makes_api_keys_and_fernet_keys_for_encryption_key(capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography.fernet import Fernet

    assert main(["keygen"]) == 0
    assert len(capsys.readouterr().out.strip()) >= 43  # 32 random bytes, url-safe
    assert main(["keygen", "--fernet"]) == 0
    key = capsys.readouterr().out.strip()
    assert Fernet(key.encode()).decrypt(Fernet(key.encode()).encrypt(b"x")) == b"x"
