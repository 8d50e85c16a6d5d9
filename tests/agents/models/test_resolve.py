"""Model-id resolution against a private cache folder (no torch: resolution is path logic only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from strop.agents.models import ModelNotFoundError, NotAModelError, model_cache_dir, resolve_model
from strop.agents.models.cache import cached_entries, cached_names


def _fake_model(folder: Path, meta: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    if meta is not None:
        (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("STROP_MODEL_CACHE", str(root))
    return root


def test_cache_dir_default_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STROP_MODEL_CACHE", raising=False)
    assert model_cache_dir() == Path.home() / ".cache" / "strop" / "models"
    monkeypatch.setenv("STROP_MODEL_CACHE", str(tmp_path))
    assert model_cache_dir() == tmp_path


def test_cache_name_and_alias(cache: Path) -> None:
    tiny = _fake_model(cache / "tiny")
    smol = _fake_model(cache / "smollm2-135m")
    assert resolve_model("tiny") == tiny.resolve()
    assert resolve_model("smollm2") == smol.resolve()
    assert resolve_model("smollm2-135m") == smol.resolve()


def test_cache_name_wins_over_cwd_folder(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_cache = _fake_model(cache / "tiny")
    _fake_model(tmp_path / "cwd" / "tiny")
    monkeypatch.chdir(tmp_path / "cwd")
    assert resolve_model("tiny") == in_cache.resolve()
    assert resolve_model("./tiny") == (tmp_path / "cwd" / "tiny").resolve()


def test_local_folder(cache: Path, tmp_path: Path) -> None:
    folder = _fake_model(tmp_path / "my-model")
    assert resolve_model(str(folder)) == folder.resolve()


@pytest.mark.parametrize(
    ("model_id", "command"),
    [
        ("tiny", "strop models build-tiny"),
        ("smollm2", "strop models import smollm2"),
        ("smollm2-135m", "strop models import smollm2"),
    ],
)
def test_missing_builtin_names_its_command(cache: Path, model_id: str, command: str) -> None:
    with pytest.raises(ModelNotFoundError, match=command):
        resolve_model(model_id)


def test_unknown_id_lists_cache_and_mentions_folders(cache: Path) -> None:
    _fake_model(cache / "tiny")
    _fake_model(cache / "my-finetune")
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("no-such-model")
    msg = str(info.value)
    assert "my-finetune" in msg and "tiny" in msg
    assert "folder" in msg and "strop models build-tiny" in msg


def test_empty_id(cache: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="empty model id"):
        resolve_model("  ")


def test_folder_without_config(cache: Path, tmp_path: Path) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(NotAModelError, match=r"missing config\.json"):
        resolve_model(str(folder))


def test_folder_without_weights(cache: Path, tmp_path: Path) -> None:
    folder = tmp_path / "half"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(NotAModelError, match="missing weights"):
        resolve_model(str(folder))


def test_broken_cache_entry_names_rebuild_command(cache: Path) -> None:
    (cache / "tiny").mkdir(parents=True)
    with pytest.raises(NotAModelError, match="strop models build-tiny --force"):
        resolve_model("tiny")


def test_file_is_not_a_model(cache: Path, tmp_path: Path) -> None:
    f = tmp_path / "weights.gguf"
    f.write_bytes(b"x")
    with pytest.raises(NotAModelError, match="is a file"):
        resolve_model(str(f))


def test_listing_skips_incomplete_and_hidden(cache: Path) -> None:
    _fake_model(cache / "tiny", meta={"parameters": 5, "source": "built"})
    (cache / "broken").mkdir()
    _fake_model(cache / ".tiny.staging")
    assert cached_names() == ["tiny"]
    [entry] = cached_entries()
    assert entry["name"] == "tiny" and entry["parameters"] == 5 and entry["path"] == cache / "tiny"


def test_staging_failure_leaves_no_entry(cache: Path) -> None:
    from strop.agents.models.cache import staging_dir

    with pytest.raises(RuntimeError, match="boom"), staging_dir("tiny") as tmp:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("boom")
    assert not (cache / "tiny").exists()
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_staging_replaces_entry_whole(cache: Path) -> None:
    from strop.agents.models.cache import staging_dir

    _fake_model(cache / "tiny", meta={"source": "old"})
    with staging_dir("tiny") as tmp:
        _fake_model(tmp / "x")  # unrelated content proves the old folder is not merged in
        (tmp / "meta.json").write_text(json.dumps({"source": "new"}))
    assert json.loads((cache / "tiny" / "meta.json").read_text()) == {"source": "new"}
    assert not (cache / "tiny" / "config.json").exists()
    assert (cache / "tiny").stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == ["tiny"]


def test_cache_lock_serialises_builders(cache: Path) -> None:
    """A second builder waits for the first: the lock is what lets parallel test workers share one build."""
    import threading
    import time

    from strop.agents.models.cache import cache_lock

    events: list[str] = []

    def second() -> None:
        with cache_lock("tiny"):
            events.append("second")

    with cache_lock("tiny"):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.2)
        events.append("first done")
    t.join(timeout=5)
    assert events == ["first done", "second"]


def test_tiny_config_rejects_bad_shapes() -> None:
    from pydantic import ValidationError

    from strop.agents.models.tiny import TinyBuildConfig

    with pytest.raises(ValidationError, match="multiple of num_heads"):
        TinyBuildConfig(hidden_size=128, num_heads=5)
    with pytest.raises(ValidationError, match="max_steps"):
        TinyBuildConfig(max_steps=0)
