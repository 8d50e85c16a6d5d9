"""A version trained in one directory evaluates and serves from another (the issue's `strop eval -m NAME --db D`
from outside the checkout), and an old row that stored the folder relative to its run's directory is either
found through STROP_RUNS_ROOT or refused on one line that names the folder and the setting."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from strop.cli import app

pytestmark = pytest.mark.slow  # one real GRPO step and one `strop eval` process on the tiny model

TRAIN = [
    "train",
    "grpo",
    "-m",
    "tiny",
    "--num-generations",
    "4",
    "--batch-size",
    "8",
    "--grad-accum",
    "2",
    "--max-completion-length",
    "8",
    "--max-steps",
    "1",
    "--lora-r",
    "4",
    "--n-tasks",
    "4",
    "-o",
    "digits=1",
    "--no-progress",
    "--name",
    "travel-c1",
    "--output-dir",
    "runs/travel/models/c1",  # relative, as a recipe's runs/<name>/models/... is
]


def _serve_one(db: str) -> str:
    """What `strop serve --follow tiny` does: the lineage's current version, loaded, answering one prompt."""
    from strop.agents.engines import GenerationRequest, load_engine
    from strop.agents.server_follow import current_version
    from strop.memory import Store

    with Store(db) as store:
        version = current_version(store, "tiny")
        engine = load_engine(version.path, adapter_path=version.adapter_path, model_version=version.name)

    async def ask() -> str:
        try:
            [[done]] = await engine.generate([GenerationRequest.chat("1+2=", max_tokens=4, temperature=0.0)])
            return done.model_version
        finally:
            await engine.close()

    return asyncio.run(ask())


def test_a_version_trained_in_one_directory_evaluates_and_serves_from_another(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from strop.agents.engines import EngineError
    from strop.memory import Store
    from strop.memory.paths import RUNS_ROOT_ENV

    monkeypatch.delenv(RUNS_ROOT_ENV, raising=False)
    checkout, elsewhere, stores = tmp_path / "checkout", tmp_path / "elsewhere", tmp_path / "stores"
    for d in (checkout, elsewhere, stores):
        d.mkdir()
    db = str(stores / "s.db")
    monkeypatch.chdir(checkout)
    res = CliRunner().invoke(app, [*TRAIN, "--db", db])
    assert res.exit_code == 0, res.output
    adapter = checkout / "runs" / "travel" / "models" / "c1"
    assert (adapter / "adapter_config.json").is_file()

    # A fresh process in another directory: the command.
    env = {k: v for k, v in os.environ.items() if k != RUNS_ROOT_ENV}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "strop",
            "eval",
            "-m",
            "travel-c1",
            "--db",
            db,
            "--n-tasks",
            "2",
            "--max-tokens",
            "8",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "travel-c1: arithmetic/heldout pass@1" in done.stdout
    monkeypatch.chdir(elsewhere)
    assert CliRunner().invoke(app, ["models", "promote", "travel-c1", "--force", "--db", db]).exit_code == 0
    assert _serve_one(db) == "travel-c1"

    # An old row: the adapter folder relative to the directory the run was started in.
    with Store(db) as store, store.db.write() as conn:
        conn.execute(
            text("UPDATE model_versions SET adapter_path = 'runs/travel/models/c1' WHERE name = 'travel-c1'")
        )
    res = CliRunner().invoke(app, ["eval", "-m", "travel-c1", "--db", db, "--n-tasks", "2"])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output  # one line, no traceback
    out = " ".join(res.output.split())
    assert "relative path 'runs/travel/models/c1'" in out and str(elsewhere / "runs/travel/models/c1") in out
    assert RUNS_ROOT_ENV in out and "build-tiny" not in out
    with pytest.raises(EngineError, match=f"runs/travel/models/c1.*{RUNS_ROOT_ENV}"):
        _serve_one(db)  # `strop serve --follow` says the same on its one error line
    monkeypatch.setenv(RUNS_ROOT_ENV, str(checkout))
    assert _serve_one(db) == "travel-c1"
    res = CliRunner().invoke(
        app, ["eval", "-m", "travel-c1", "--db", db, "--n-tasks", "2", "--max-tokens", "8"]
    )
    assert res.exit_code == 0 and "travel-c1: arithmetic/heldout pass@1" in res.output, res.output
