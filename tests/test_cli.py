"""The CLI as one composition root: shared helpers in one public module, `strop --help` without the trainer
registry, `strop eval` scores kept apart per task-set options, and `strop loops` roles per config."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from strop.cli import app

CLI = Path(__file__).resolve().parents[1] / "strop" / "cli"


def _invoke(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return res.exit_code, res.output


def test_no_cli_module_imports_a_private_name_from_another() -> None:
    found = []
    for path in sorted(CLI.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("strop.cli"):
                found += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("_")]
            if isinstance(node, ast.FunctionDef) and node.name == "_fail":
                found.append(f"{path.name}: its own _fail (use strop.cli.common.fail)")
    assert found == []


def test_strop_help_loads_neither_the_trainers_nor_their_libraries() -> None:
    code = (
        "import json, sys; sys.argv = ['strop', '--help']\n"
        "from strop.cli import app\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "heavy = ('torch', 'trl', 'sqlalchemy', 'transformers', 'strop.training.trainers', 'pydantic')\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []


def test_loops_list_gives_the_roles_of_the_default_config_and_says_when_they_depend_on_it() -> None:
    code, out = _invoke("loops", "list")
    assert code == 0, out
    cells = [line.split("│") for line in out.splitlines() if line.count("│") > 3]
    roles = {cell[1].strip(): cell[2].strip() for cell in cells}  # loop name -> its roles column
    assert roles["scrit"] == "policy, critic"
    assert roles["self_correct"] == roles["mcts"] == "policy (depends on config)"
    assert roles["game_demos"] == "none"


def test_loops_show_gives_the_roles_of_the_config_given_with_set() -> None:
    code, out = _invoke("loops", "show", "self-correct")
    assert code == 0 and "roles (the default config): policy (depends on config)" in out, out
    code, out = _invoke("loops", "show", "self-correct", "--set", "feedback=critic")
    assert code == 0 and "roles (this config): policy, critic (depends on config)" in out, out
    code, out = _invoke("loops", "show", "mcts", "--set", "evaluation=scorer")
    assert code == 0 and "roles (this config): policy, critic" in out, out
    code, out = _invoke("loops", "show", "mcts", "--set", "evaluation=guess")
    assert code == 1 and "--set evaluation='guess'" in out and "strop loops show mcts" in out, out


@pytest.mark.slow
def test_eval_records_each_option_set_under_its_own_label(tiny_model_path: Path, tmp_path: Path) -> None:
    from strop.memory import Store

    db = ["--db", f"sqlite:///{tmp_path / 's.db'}"]
    budget = ["--n-tasks", "4", "--max-tokens", "12"]
    code, out = _invoke("eval", "-m", "tiny", "-o", "word_problems=true", *budget, *db)
    assert code == 0 and "tiny: arithmetic[word_problems=True]/heldout pass@1" in out, out
    code, out = _invoke("eval", "-m", "tiny", *budget, *db)
    assert code == 0 and "tiny: arithmetic/heldout pass@1" in out, out
    store = Store(db[1])
    try:
        metrics = store.get_model("tiny").metrics
    finally:
        store.close()
    # Two evaluations, two keys: the plain set's score did not overwrite the word problems' one.
    assert metrics["arithmetic[word_problems=True]/heldout/n_tasks"] == 4
    assert metrics["arithmetic/heldout/n_tasks"] == 4
