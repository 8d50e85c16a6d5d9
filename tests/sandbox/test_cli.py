"""`strop tasks ...` and `strop jail ...` through the real CLI app."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from strop.cli import app

runner = CliRunner()


def test_tasks_list_names_every_set() -> None:
    result = runner.invoke(app, ["tasks", "list"])
    assert result.exit_code == 0
    for name in ("arithmetic", "gsm8k", "humaneval", "jsonl"):
        assert name in result.output


def test_tasks_show_with_options_and_json() -> None:
    result = runner.invoke(
        app,
        [
            "tasks",
            "show",
            "arithmetic",
            "--split",
            "heldout",
            "--n",
            "2",
            "--json",
            "-o",
            "digits=3",
            "-o",
            "steps=2",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert len(rows) == 2 and all(r["split"] == "heldout" and len(r["reference_steps"]) == 2 for r in rows)


def test_tasks_show_errors_say_what_to_do() -> None:
    result = runner.invoke(app, ["tasks", "show", "nope"])
    assert result.exit_code == 2 and "known task sets" in result.output
    result = runner.invoke(app, ["tasks", "show", "gsm8k"], env={"STROP_GSM8K": ""})
    assert result.exit_code == 2 and "path=" in result.output


def test_jail_run_prints_the_verdict(tmp_path: Path) -> None:
    ok = tmp_path / "ok.py"
    ok.write_text("print('hello from the jail')")
    result = runner.invoke(app, ["jail", "run", str(ok)])
    assert result.exit_code == 0 and "hello from the jail" in result.output and "verdict: ok" in result.output
    loop = tmp_path / "loop.py"
    loop.write_text("while True:\n    pass\n")
    result = runner.invoke(
        app, ["jail", "run", str(loop), "--timeout", "1", "--json", "--isolation", "rlimits"]
    )
    assert result.exit_code == 1
    assert json.loads(result.output)["verdict"] == "timeout"
