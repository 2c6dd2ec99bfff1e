"""Every setting is documented: in the README's configuration table and in .env.example, and the example parses."""

from __future__ import annotations

from pathlib import Path

import pytest

from entrypoints.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_setting_is_documented(name: str) -> None:
    variable = name.upper()
    assert f"`{variable}`" in (ROOT / "README.md").read_text(), f"{variable} missing from the README"
    assert variable in (ROOT / ".env.example").read_text(), f"{variable} missing from .env.example"


def test_env_example_is_a_valid_configuration() -> None:
    settings = Settings(_env_file=ROOT / ".env.example")  # type: ignore[call-arg]
    assert settings.cache_backend == "none"
    assert settings.model_name == "all-mpnet-base-v2"
    assert settings.served_models() == ["all-mpnet-base-v2"]  # the peoplepad container serves one model
    assert settings.max_input_length == 1024  # peoplepad's seed configuration
    assert Settings.model_fields["max_input_length"].default == 8192  # the default, documented in the README
    assert "| `MAX_INPUT_LENGTH` | `8192` |" in (ROOT / "README.md").read_text()


def test_the_readme_documents_peak_memory_per_model_alone_and_together() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Several models in one process") :]
    for row in ("| all-mpnet-base-v2 |", "| all-MiniLM-L6-v2 |", "| all-mpnet-base-v2 + all-MiniLM-L6-v2 |"):
        assert row in section.split("\n## ")[0], row
    assert "benchmarks/model_memory.py" in section
