"""SCRIT through the real path: the tiny model as policy and (self-)critic, a real store on SQLite and
PostgreSQL, the critic benchmark as the gate, a kill mid-collection and a rerun; and critic examples trained
with real TRL into a candidate the critic benchmark scores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def scrit_recipe(
    tmp_path: Path,
    *,
    per_cycle: int = 6,
    heldout: int = 6,
    concurrency: int = 8,
    cycles: int = 1,
    overrides: str = "",
    critic: str = "policy",
) -> Path:
    text = f'''name = "tiny-scrit"
cycles = {cycles}
output_dir = "{tmp_path / "run"}"

[roles]
policy = "tiny"
critic = "{critic}"

[[stages]]
name = "scrit"
loop = "scrit"
concurrency = {concurrency}
tasks = {{ name = "arithmetic", options = {{ steps = 2 }}, train_per_cycle = {per_cycle}, heldout = {heldout} }}
config = {{ n_solutions = 2, critiques_per_solution = 2, solution_max_tokens = 32, critic_max_tokens = 24, shots = 0, seed = 0 }}
{overrides}
[stages.train]
kind = "sft"
role = "critic"
settings = {{ epochs = 1, batch_size = 4, learning_rate = 1e-3, max_length = 1024, lora = {{ r = 4, alpha = 8 }} }}

[stages.eval]
target = "critic"
margin = 0.0
critic_max_tokens = 24

[engine]
max_batch_size = 64
'''
    p = tmp_path / "scrit.toml"
    p.write_text(text)
    return p


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_scrit_stage_runs_and_gates_on_the_critic_benchmark(
    db_url: str, tmp_path: Path, tiny_model_path: Path
) -> None:
    from strop.memory import Store
    from strop.training.evolve import Evolution, StagePhase
    from strop.training.recipe import load_recipe

    store = Store(db_url)
    evo = Evolution(load_recipe(scrit_recipe(tmp_path)), store, progress=False)
    rows = await evo.run()
    episodes = store.list_episodes(evo.collect_run_id(1, 0))
    assert len(episodes) == 6 and all(e.loop == "scrit" for e in episodes)
    ep = episodes[0]
    assert len(ep.steps) == 2 and len(ep.critiques) == 4  # 2 solutions x 2 critiques
    assert all(c.validated is not None and c.critic_version == evo.bases["policy"].id for c in ep.critiques)
    base = store.get_model(evo.bases["policy"].id)
    prefix = "arithmetic[steps=2]/critic"
    assert base.metrics[f"{prefix}/n_tasks"] == 6 and f"{prefix}/unparsed" in base.metrics
    assert "arithmetic[steps=2]/heldout/pass@1" in base.metrics  # the policy's own accuracy, beside the gate
    kept = sum(e.outcome["examples"] for e in episodes)
    assert rows[0].policy_accuracy is not None and rows[0].heldout_accuracy == base.metrics[f"{prefix}/f1"]
    # The tiny model was never taught to critique: nothing validates, so the stage says so and skips training.
    assert rows[-1].phase == (StagePhase.SKIPPED if kept == 0 else StagePhase.DONE)
    assert (tmp_path / "run" / "table.md").read_text().count("policy acc") == 1


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_a_warm_up_round_without_validation_then_a_validated_round_records_kept_critiques(
    sqlite_url: str, tmp_path: Path, tiny_model_path: Path
) -> None:
    """recipes/scrit-warm-arithmetic.toml's shape on the tiny model: cycle 1 keeps every critique that parses
    (1 per solution), cycle 2 only the validated ones (2 per solution); each round's counts reach the table.
    The critic is its own lineage, as in the recipe: two engines, and the policy is never trained."""
    from strop.agents.loops.scrit import summarize
    from strop.memory import Store
    from strop.training.evolve import Evolution
    from strop.training.recipe import load_recipe

    warm_up = (
        "[[stages.overrides]]\ncycles = [1]\nconfig = { validate = false, critiques_per_solution = 1 }\n"
    )
    store = Store(sqlite_url)
    evo = Evolution(
        load_recipe(
            scrit_recipe(tmp_path, per_cycle=4, heldout=4, cycles=2, overrides=warm_up, critic="tiny")
        ),
        store,
        progress=False,
    )
    rows = await evo.run()
    assert evo.weights("critic") == "critic" and {r.role for r in rows} == {"critic"}
    assert rows[0].policy_accuracy is None  # the policy is not the critic's weights: nothing to report
    rounds = [store.list_episodes(evo.collect_run_id(k, 0)) for k in (1, 2)]
    assert [len(eps) for eps in rounds] == [4, 4]
    assert [{len(e.critiques) for e in eps} for eps in rounds] == [{2}, {4}]  # 2 solutions x 1, then x 2
    for eps, validate in zip(rounds, (False, True), strict=True):
        assert all(e.outcome["validate"] is validate for e in eps)
        kept = sum(e.outcome["correct"] for e in eps)
        counted = sum(c.parsed if not validate else bool(c.validated) for e in eps for c in e.critiques)
        assert kept == counted  # warm-up: the parsed ones; validated round: the validated ones
        assert sum(e.outcome["validated"] for e in eps) == sum(
            bool(c.validated) for e in eps for c in e.critiques
        )
    by_cycle = {r.cycle: r.collection for r in rows if r.cycle}
    assert by_cycle == {1: summarize(rounds[0]), 2: summarize(rounds[1])}
    assert "critiques 8:" in by_cycle[1] and "validation off" in by_cycle[1]
    assert "critiques 16:" in by_cycle[2] and "by validation" in by_cycle[2]
    table = (tmp_path / "run" / "table.md").read_text()
    assert by_cycle[1] in table and by_cycle[2] in table
    store.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_during_scrit_collection_then_rerun_is_consistent(
    sqlite_url: str, tmp_path: Path, tiny_model_path: Path
) -> None:
    from typer.testing import CliRunner

    from strop.cli import app
    from strop.memory import Store
    from strop.training.evolve import Evolution
    from strop.training.recipe import load_recipe

    path = scrit_recipe(tmp_path, per_cycle=12, heldout=4, concurrency=1)
    store = Store(sqlite_url)
    evo = Evolution(load_recipe(path), store, progress=False)
    args = ["evolve", "--recipe", str(path), "--db", sqlite_url, "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "strop", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ},
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if len(store.episode_ids(evo.collect_run_id(1, 0))) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    out = proc.communicate()[0].decode()
    assert proc.returncode == -signal.SIGKILL, out
    assert len(store.episode_ids(evo.collect_run_id(1, 0))) < 12
    # The rerun resumes from the store alone: in this process, without a second interpreter importing torch.
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    episodes = store.list_episodes(evo.collect_run_id(1, 0))
    assert len(episodes) == 12 == len({e.task_id for e in episodes})
    assert "critic F1" in res.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_critic_examples_train_a_candidate_the_benchmark_scores(
    db_url: str, tmp_path: Path, tiny_model_path: Path
) -> None:
    """Validated SCRIT critiques (scripted critic, so some validate) -> critic SFT with TRL -> critic eval."""
    from strop.agents.critic_eval import CriticEvalConfig, evaluate_critic, labelled_set
    from strop.agents.engines import load_engine
    from strop.agents.loops import scrit
    from strop.agents.runner import Runner, load_version_engine, resolve_version
    from strop.critics import VerifierCritic
    from strop.memory import Store
    from strop.memory.records import ExampleKind, ModelStatus, Role, RunRecord
    from strop.sandbox.tasks import ArithmeticTaskSet, Split
    from strop.training.jobs import train_candidate
    from tests.agents.loops.fakes import ScriptedEngine

    store = Store(db_url)
    ts = ArithmeticTaskSet()  # one-step sums: what the tiny model answers right ~40% of the time
    tasks = ts.tasks(Split.TRAIN, 8)
    answers = {t.prompt: t for t in tasks}

    def critic_says(prompt: str, i: int) -> str:  # accepts every solution; validated only for right ones
        return "Step 1: correct.\nFirst wrong step: none\nVerdict: correct"

    policy = load_engine("tiny", model_version="tiny")
    try:
        graph = scrit.build_graph(
            policy,
            ScriptedEngine(critic_says, "scripted-critic"),
            VerifierCritic(ts),
            scrit.ScritConfig(
                n_solutions=4,
                critiques_per_solution=1,
                solution_max_tokens=24,
                system_prompt=None,
                shots=0,
                seed=0,
            ),
        )
        res = await Runner(store, progress=False).run(graph, tasks, RunRecord(loop="scrit"))
    finally:
        await policy.close()
    assert res.episodes == 8 and answers
    n = store.count_examples(Role.CRITIC, ExampleKind.SFT)
    assert n > 0, "the tiny model answers some two-step sums right, and accepting those validates"
    parent = resolve_version(store, "tiny")
    out = train_candidate(
        store,
        parent,
        kind="sft",
        role=Role.CRITIC,
        example_kinds=[ExampleKind.SFT],
        settings={"epochs": 1, "batch_size": 4, "max_length": 1024, "lora": {"r": 4, "alpha": 8}},
        output_dir=tmp_path / "critic-c1",
        name="tiny-critic-c1",
    )
    assert out.candidate.status == ModelStatus.CANDIDATE and out.examples == n
    assert store.count_examples(Role.CRITIC, ExampleKind.SFT, unconsumed_by="critic:sft") == 0
    engine = load_version_engine(out.candidate)
    try:
        cfg = CriticEvalConfig(n_items=6, max_tokens=24, shots=0)
        scored = await evaluate_critic(
            engine,
            labelled_set(ts, cfg, "arithmetic"),
            store=store,
            model_id=out.candidate.id,
            label="arithmetic",
            config=cfg,
        )
    finally:
        await engine.close()
    metrics = store.get_model(out.candidate.id).metrics
    assert metrics["arithmetic/critic/n_tasks"] == 6 and scored.scores["n_erroneous"] == 3
    assert metrics["arithmetic/critic/f1"] == scored.f1
