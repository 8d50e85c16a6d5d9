"""The temperature sweep of `strop eval-search`: chosen on training tasks only, then applied once to the held-out
tasks. The selection rule on hand-made figures, the order of task reads through the real path on the tiny model
(a held-out task read before the choice fails it), and the command's table and stored figures."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from strop.agents import search_eval
from strop.agents.search_eval import SAMPLED, SearchEvalConfig, choose, evaluate_search, training_sample
from strop.cli import app
from strop.sandbox.tasks import ArithmeticTaskSet
from strop.sandbox.tasks.base import Split, Task, Verdict


class SpyTaskSet:
    """The arithmetic set, logging every read of a task: which split was listed or verified, in order."""

    def __init__(self) -> None:
        self.inner = ArithmeticTaskSet()
        self.name = self.inner.name
        self.log: list[tuple[str, Split]] = []

    def tasks(self, split: Split | str, n: int | None = None) -> list[Task]:
        self.log.append(("tasks", Split(split)))
        return self.inner.tasks(split, n)

    def verify(self, task: Task, output: str) -> Verdict:
        self.log.append(("verify", task.split))
        return self.inner.verify(task, output)


def test_choose_takes_the_best_training_accuracy_and_the_lowest_temperature_on_ties() -> None:
    assert choose({0.2: 0.1, 0.4: 0.3, 0.8: 0.2}) == 0.4
    assert choose({0.8: 0.25, 0.2: 0.25, 0.6: 0.1}) == 0.2


def test_training_sample_is_seeded_and_from_the_training_split() -> None:
    ts = ArithmeticTaskSet()
    a, b = training_sample(ts, 5, 0), training_sample(ts, 5, 0)
    assert [t.id for t in a] == [t.id for t in b] and len(a) == 5
    assert all(t.split == Split.TRAIN for t in a)
    assert [t.id for t in training_sample(ts, 5, 1)] != [t.id for t in a]
    held = {t.id for t in ts.tasks(Split.HELDOUT)}
    assert not held & {t.id for t in a}


def test_sweep_settings_refuse_a_zero_temperature() -> None:
    with pytest.raises(ValueError, match="above 0"):
        SearchEvalConfig(temperatures=[0.0, 0.5])
    assert SearchEvalConfig(temperatures=[0.8, 0.2, 0.8]).temperatures == [0.2, 0.8]
    # a recipe's search evaluation takes the same sweep, checked when the recipe is read
    from strop.agents.evaluators.search import SearchSettings

    with pytest.raises(ValueError, match="temperatures"):
        SearchSettings(temperatures=[0.0])
    assert SearchSettings(temperatures=[0.2, 0.6], sweep_tasks=8).sweep_tasks == 8


@pytest.mark.slow
async def test_the_sweep_chooses_before_any_held_out_task_is_read(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from strop.agents.runner import load_version_engine, resolve_version
    from strop.critics.scorer import StepScorer
    from strop.memory import Store

    ts = SpyTaskSet()
    real_choose = search_eval.choose

    def logged_choose(by_temperature: dict[float, float]) -> float:
        ts.log.append(("choose", Split.TRAIN))
        return real_choose(by_temperature)

    monkeypatch.setattr(search_eval, "choose", logged_choose)
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    version = resolve_version(store, "tiny")
    engine = load_version_engine(version)
    cfg = SearchEvalConfig(
        n_tasks=2, budgets=[48], max_tokens=16, k=2, temperatures=[0.3, 1.2], sweep_tasks=2, sweep_seed=3
    )
    try:
        res = await evaluate_search(
            engine, StepScorer(engine), ts, store=store, model_id=version.id, label="arithmetic", config=cfg
        )
    finally:
        await engine.close()
    last_choice = max(i for i, (what, _) in enumerate(ts.log) if what == "choose")
    selection = ts.log[:last_choice]
    assert ("verify", Split.TRAIN) in selection, "the sweep scored training tasks"
    assert all(split == Split.TRAIN for _, split in selection), "a held-out task was read during selection"
    assert ("verify", Split.HELDOUT) in ts.log[last_choice:], "then the held-out tasks were run"
    assert res.sweep is not None and res.sweep.n_tasks == 2
    for m in SAMPLED:
        assert set(res.sweep.accuracy[m][48]) == {0.3, 1.2}
        assert res.temperature[m][48] == res.sweep.chosen[m][48] in (0.3, 1.2)
    metrics = store.get_model(version.id).metrics
    assert metrics["arithmetic/train/search/n_tasks"] == 2
    assert {f"arithmetic/train/search/{m}@48/T{t}" for m in SAMPLED for t in (0.3, 1.2)} <= set(metrics)
    assert metrics["arithmetic/heldout/search/mcts-prm@48/temperature"] == res.temperature["mcts-prm"][48]
    store.close()


def test_eval_search_sweeps_temperatures_on_training_problems(tiny_model_path: Path, tmp_path: Path) -> None:
    from strop.memory import Store

    db = str(tmp_path / "s.db")
    args = ["eval-search", "--model", "tiny", "--budgets", "64", "--n-tasks", "3", "--max-tokens", "24"]
    out = CliRunner().invoke(app, [*args, "--temperatures", "0.4,1.0", "--sweep-tasks", "3", "--db", db])
    assert out.exit_code == 0, out.output
    assert "temperatures chosen on 3 training problems only" in out.output
    assert "chosen T" in out.output and "vs greedy" in out.output
    metrics = Store(db).get_model("tiny").metrics
    assert {f"arithmetic/heldout/search/{m}@64/temperature" for m in SAMPLED} <= set(metrics)
    assert "arithmetic/train/search/greedy" in metrics
    bad = CliRunner().invoke(app, [*args, "--temperatures", "0,0.5", "--db", db])
    assert bad.exit_code != 0 and "--temperatures 0,0.5" in bad.output
    helped = CliRunner().invoke(app, ["eval-search", "--help"], env={"COLUMNS": "250"})
    assert "--temperatures" in helped.output and "TRAINING problems" in helped.output
