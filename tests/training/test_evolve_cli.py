"""Bad input to `strop evolve`: each error names the field or the command that fixes it."""

from pathlib import Path

from typer.testing import CliRunner

from strop.cli import app
from tests.training.evolve_helpers import tiny_recipe

runner = CliRunner()


def _evolve(recipe: Path, tmp_path: Path) -> tuple[int, str]:
    res = runner.invoke(app, ["evolve", "--recipe", str(recipe), "--db", f"sqlite:///{tmp_path / 's.db'}"])
    return res.exit_code, " ".join(res.output.split())


def test_unknown_field_and_wrong_type(tmp_path: Path) -> None:
    p = tiny_recipe(tmp_path, extra="[eval]\nkk = 3\n")
    code, out = _evolve(p, tmp_path)
    assert code == 1 and "stages[0].eval.kk: unknown field" in out
    p.write_text(p.read_text().replace("[eval]\nkk = 3\n", "").replace("n = 4", 'n = "four"'))
    code, out = _evolve(p, tmp_path)
    assert code == 1 and "stages[0].config.n:" in out and "'four'" in out


def test_task_set_that_does_not_exist(tmp_path: Path) -> None:
    p = tiny_recipe(tmp_path)
    p.write_text(p.read_text().replace('name = "arithmetic"', 'name = "arithmatic"'))
    code, out = _evolve(p, tmp_path)
    assert (
        code == 1
        and "tasks.name" in out
        and "arithmatic" in out
        and "arithmetic" in out.replace("arithmatic", "")
    )


def test_model_that_does_not_exist(tmp_path: Path) -> None:
    code, out = _evolve(tiny_recipe(tmp_path, model="no-such-model"), tmp_path)
    assert code == 1 and "`roles.policy`" in out and "no-such-model" in out and "strop models" in out


def test_task_set_options_that_do_not_exist(tmp_path: Path) -> None:
    p = tiny_recipe(tmp_path)
    p.write_text(
        p.read_text().replace('name = "arithmetic"', 'name = "arithmetic"\noptions = { digitz = 3 }')
    )
    code, out = _evolve(p, tmp_path)
    assert code == 1 and "tasks.options" in out and "digitz" in out


def test_task_options_on_the_command_line_reach_every_stage(tmp_path: Path) -> None:
    code, out = _evolve_args(tiny_recipe(tmp_path), tmp_path, "--option", "digitz=3")
    assert code == 1 and "tasks.options" in out and "digitz" in out
    code, out = _evolve_args(tiny_recipe(tmp_path), tmp_path, "--option", "digits")
    assert code != 0 and "KEY=VALUE" in out


def test_a_loop_that_does_not_exist_is_named(tmp_path: Path) -> None:
    p = tmp_path / "r.toml"
    p.write_text('name = "x"\n[roles]\npolicy = "tiny"\n[[stages]]\nname = "a"\nloop = "tree_of_thoughts"\n')
    code, out = _evolve(p, tmp_path)
    assert code == 1 and "stages[0].loop: unknown loop 'tree_of_thoughts'" in out and "best_of_n" in out


def _evolve_args(recipe: Path, tmp_path: Path, *args: str) -> tuple[int, str]:
    res = runner.invoke(
        app, ["evolve", "--recipe", str(recipe), "--db", f"sqlite:///{tmp_path / 's.db'}", *args]
    )
    return res.exit_code, " ".join(res.output.split())


def test_more_heldout_tasks_than_the_task_set_has_is_one_line(tmp_path: Path) -> None:
    p = tiny_recipe(tmp_path, heldout=16)
    p.write_text(
        p.read_text().replace('name = "arithmetic"', 'name = "arithmetic"\noptions = { digits = 1 }')
    )
    code, out = _evolve(p, tmp_path)
    assert code == 1 and "only 8 distinct heldout problems exist" in out and "Ask for fewer" in out
    assert "Traceback" not in out
