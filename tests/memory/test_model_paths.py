"""Where model versions live: the registry stores folders that resolve from any working directory and host.

New rows are absolute (or relative to STROP_RUNS_ROOT, written as `$STROP_RUNS_ROOT/...`); rows from before,
relative to the directory their run was started in, are found under STROP_RUNS_ROOT, the working directory
or the SQLite file's folder, or refused naming the folders tried and the setting. `strop models list` names
the task set and metric of every accuracy it shows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from strop.memory import NotFoundError, Store
from strop.memory.paths import RUNS_ROOT_ENV, ModelFolderNotFoundError
from strop.memory.records import ModelStatus, ModelVersionRecord


def _folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    return path


def _stored(store: Store, model_id: str) -> tuple[str, str | None]:
    """The row as written, not as read back resolved."""
    with store.db.read() as conn:
        row = conn.execute(
            text("SELECT path, adapter_path FROM model_versions WHERE id = :i"), {"i": model_id}
        ).one()
    return row.path, row.adapter_path


def _make_legacy(store: Store, model_id: str, adapter: str) -> None:
    """What registration wrote before paths were stored absolute: the folder relative to the run's directory."""
    with store.db.write() as conn:
        conn.execute(
            text("UPDATE model_versions SET adapter_path = :a WHERE id = :i"), {"a": adapter, "i": model_id}
        )


def _candidate(store: Store, base: Path, adapter: str, name: str = "c1") -> ModelVersionRecord:
    parent = store.register_model(
        ModelVersionRecord(name="base", lineage="base", path=str(base), status=ModelStatus.BASE)
    )
    return store.register_model(
        ModelVersionRecord(
            name=name, lineage="base", path=str(base), adapter_path=adapter, parent_id=parent.id
        )
    )


@pytest.fixture(autouse=True)
def _no_runs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RUNS_ROOT_ENV, raising=False)


def test_a_relative_folder_is_stored_absolute_and_loads_from_any_directory(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, elsewhere = tmp_path / "checkout", tmp_path / "elsewhere"
    adapter = _folder(run_dir / "runs" / "r" / "models" / "c1")
    elsewhere.mkdir()
    base = _folder(tmp_path / "base")
    with Store(db_url) as store:
        monkeypatch.chdir(run_dir)
        cand = _candidate(store, base, "runs/r/models/c1")
        assert cand.adapter_path == str(adapter) == _stored(store, cand.id)[1]
        monkeypatch.chdir(elsewhere)
        for got in (store.get_model("c1"), store.list_models()[-1], store.locate_model(cand.id)):
            assert got is not None and (got.path, got.adapter_path) == (str(base), str(adapter))
        assert store.current_model("base").path == str(base)  # type: ignore[union-attr]
        with pytest.raises(NotFoundError, match="not registered"):
            store.locate_model("nope")


def test_under_the_runs_root_a_folder_is_stored_relative_to_it(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hosts that mount the shared runs disk at different places each set STROP_RUNS_ROOT to their mount."""
    here, there = tmp_path / "mnt-a", tmp_path / "mnt-b"
    _folder(here / "models" / "c1")
    _folder(there / "models" / "c1")  # the same disk seen from another host
    base = _folder(tmp_path / "base")  # outside the root: stays absolute
    with Store(db_url) as store:
        monkeypatch.setenv(RUNS_ROOT_ENV, str(here))
        cand = _candidate(store, base, str(here / "models" / "c1"))
        assert _stored(store, cand.id) == (str(base), "$STROP_RUNS_ROOT/models/c1")
        assert cand.adapter_path == str(here / "models" / "c1")
        monkeypatch.setenv(RUNS_ROOT_ENV, str(there))
        assert store.locate_model("c1").adapter_path == str(there / "models" / "c1")
        monkeypatch.delenv(RUNS_ROOT_ENV)
        assert store.get_model("c1").adapter_path == "$STROP_RUNS_ROOT/models/c1"  # type: ignore[union-attr]
        with pytest.raises(ModelFolderNotFoundError, match=f"c1: .*{RUNS_ROOT_ENV} is not set here"):
            store.locate_model("c1")


def test_an_old_relative_row_is_found_under_the_runs_root_or_refused_naming_the_folders(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, elsewhere = tmp_path / "checkout", tmp_path / "elsewhere"
    adapter = _folder(run_dir / "runs" / "r" / "models" / "c1")
    elsewhere.mkdir()
    base = _folder(tmp_path / "base")
    with Store(db_url) as store:
        cand = _candidate(store, base, str(adapter))
        _make_legacy(store, cand.id, "runs/r/models/c1")
        monkeypatch.chdir(elsewhere)
        assert store.get_model("c1").adapter_path == "runs/r/models/c1"  # type: ignore[union-attr]  # listing works
        with pytest.raises(ModelFolderNotFoundError) as info:
            store.locate_model("c1")
        msg = str(info.value)
        assert "c1: no adapter folder for the relative path 'runs/r/models/c1'" in msg
        assert str(elsewhere / "runs" / "r" / "models" / "c1") in msg and RUNS_ROOT_ENV in msg
        monkeypatch.setenv(RUNS_ROOT_ENV, str(run_dir))
        assert store.locate_model("c1").adapter_path == str(adapter)
        assert store.get_model("c1").adapter_path == str(adapter)  # type: ignore[union-attr]
        monkeypatch.delenv(RUNS_ROOT_ENV)
        monkeypatch.chdir(run_dir)  # the directory the run was made in, as before
        assert store.locate_model("c1").adapter_path == str(adapter)


def test_an_old_relative_row_is_found_beside_the_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`./strop.db` sits in the directory the run was started in, next to the runs/ it wrote."""
    run_dir, elsewhere = tmp_path / "checkout", tmp_path / "elsewhere"
    adapter = _folder(run_dir / "runs" / "r" / "models" / "c1")
    elsewhere.mkdir()
    with Store(str(run_dir / "strop.db")) as store:
        cand = _candidate(store, _folder(tmp_path / "base"), str(adapter))
        _make_legacy(store, cand.id, "runs/r/models/c1")
        monkeypatch.chdir(elsewhere)
        assert store.locate_model("c1").adapter_path == str(adapter)


def test_a_moved_folder_is_refused_naming_it(db_url: str, tmp_path: Path) -> None:
    with Store(db_url) as store:
        _candidate(store, _folder(tmp_path / "base"), str(tmp_path / "gone"))
        with pytest.raises(
            ModelFolderNotFoundError, match=f"no adapter folder at {tmp_path / 'gone'}: it was moved"
        ):
            store.locate_model("c1")


def test_models_list_names_the_task_set_and_metric_of_each_accuracy(db_url: str) -> None:
    from strop.cli import app

    metrics = {
        "arithmetic[digits=2]/heldout/pass@1": 0.4,
        "arithmetic[digits=2]/heldout/pass@4": 0.7,
        "arithmetic[digits=2]/heldout/n_tasks": 100,
        "gsm8k/heldout/pass@1": 0.05,
        "gsm8k/heldout/n_tasks": 20,
        "gsm8k/heldout/memory3/pass@1": 0.1,
        "gsm8k/heldout/memory3/n_tasks": 20,
        "heldout_accuracy": 0.05,  # written by the last evaluation, whatever its set: not shown
        "train_loss": 0.5,
    }
    with Store(db_url) as store:
        base = store.register_model(
            ModelVersionRecord(name="b", lineage="b", path="/m", status=ModelStatus.BASE, metrics=metrics)
        )
        store.register_model(
            ModelVersionRecord(
                name="old", lineage="b", path="/m", parent_id=base.id, metrics={"heldout_accuracy": 0.3}
            )
        )
    out = CliRunner().invoke(app, ["models", "list", "--no-cache", "--db", db_url], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    lines = out.output
    for shown in (
        "arithmetic[digits=2] pass@1 40.0% (n=100)",
        "arithmetic[digits=2] pass@4 70.0% (n=100)",
        "gsm8k pass@1 5.0% (n=20)",
        "gsm8k pass@1 with memory k=3 10.0% (n=20)",
        "task set not recorded accuracy 30.0%",
        "held-out accuracy (task set, metric)",
    ):
        assert shown in lines, shown
    # Promotion compares one named set, never whichever was evaluated last.
    res = CliRunner().invoke(app, ["models", "promote", "old", "--db", db_url])
    assert res.exit_code == 1 and "no held-out evaluation" in res.output
    with Store(db_url) as store:
        store.register_model(
            ModelVersionRecord(name="two", lineage="b", path="/m", parent_id=base.id, metrics=metrics)
        )
    res = CliRunner().invoke(app, ["models", "promote", "two", "--db", db_url], env={"COLUMNS": "200"})
    assert res.exit_code == 1 and "several task sets" in res.output, res.output
    assert "arithmetic[digits=2]/heldout, gsm8k/heldout" in res.output
    res = CliRunner().invoke(
        app, ["models", "promote", "two", "--metric", "gsm8k/heldout", "--margin", "0", "--db", db_url]
    )
    assert res.exit_code == 1 and "gsm8k/heldout/pass@1 0.050 only ties parent 0.050" in res.output, (
        res.output
    )


def test_the_cache_table_says_what_a_build_accuracy_was_measured_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from strop.cli import app

    entry = tmp_path / "cache" / "mini"
    entry.mkdir(parents=True)
    (entry / "config.json").write_text("{}")
    (entry / "model.safetensors").write_bytes(b"")
    meta = {"name": "mini", "source": "test", "parameters": 1000, "heldout_accuracy": 0.4225}
    (entry / "meta.json").write_text(
        json.dumps({**meta, "heldout_n": 400, "heldout_task": "arithmetic digits=2 +"})
    )
    monkeypatch.setenv("STROP_MODEL_CACHE", str(tmp_path / "cache"))
    out = CliRunner().invoke(
        app, ["models", "list", "--db", str(tmp_path / "none.db")], env={"COLUMNS": "200"}
    )
    assert out.exit_code == 0, out.output
    assert "held-out acc when built" in out.output and "42.2% (arithmetic digits=2 +, n=400)" in out.output
