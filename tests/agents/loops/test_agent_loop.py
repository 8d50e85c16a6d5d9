"""The `agent` loop: a user's agent function (`module:function`) run n times per task through the real runner
on the tiny model, every call captured; rollouts that raise, hang or never call the model are failed with their
error and train nothing; `strop run agent --set entry=...` works; the agent evaluator measures the agent.

The agent functions below are the entry points the tests name (`tests.agents.loops.test_agent_loop:solve`).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from strop.agents.capture import rollouts as rollouts_module
from strop.agents.engines.base import Completion, FinishReason, GenerationRequest, as_requests
from strop.agents.loops import agent as agent_loop
from strop.agents.loops.base import task_messages
from strop.agents.loops.registry import LoopResources, get_loop
from strop.agents.runner import Runner
from strop.critics import VerifierCritic
from strop.memory.records import ExampleKind, RunRecord
from strop.sandbox.tasks import ArithmeticTaskSet, Split, Task

TS = ArithmeticTaskSet()
HERE = "tests.agents.loops.test_agent_loop"


# --- entry points ------------------------------------------------------------------------------------------


async def solve(task: Task, client: Any) -> str:
    """Two calls: an answer, then a check that continues the conversation (so drift is measured)."""
    messages = [m.model_dump() for m in task_messages(task, None)]
    first = await client.chat.completions.create(
        model="my-hard-coded-model", messages=messages, max_tokens=24, temperature=1.0
    )
    answer = first.choices[0].message.content or ""
    follow = [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": task.prompt}]
    await client.chat.completions.create(model="gpt-4o", messages=follow, max_tokens=8, temperature=1.0)
    return answer


async def raises(task: Task, client: Any) -> str:
    await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": task.prompt}], max_tokens=4
    )
    raise ValueError(f"the tool broke on {task.id}")


async def hangs(task: Task, client: Any) -> str:
    await asyncio.sleep(60)
    return "never"


async def never_calls(task: Task, client: Any) -> str:
    return "#### 42"


def not_async(task: Task, client: Any) -> str:
    return "sync"


class ParityEngine:
    """Right when the request's seed is even, wrong when odd: rollouts of a seeded group get mixed rewards."""

    model_version = "parity"

    def __init__(self) -> None:
        self.seeds: list[int | None] = []

    async def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        out = []
        for r in as_requests(requests):
            self.seeds.append(r.sampling.seed)
            a, b = (int(x) for x in re.findall(r"\d+", r.messages[-1].content)[:2])
            right = (r.sampling.seed or 0) % 2 == 0
            text = f"#### {a + b if right else a + b + 1}"
            out.append(
                [
                    Completion(
                        text=text,
                        prompt_token_ids=[1, 2, 3],
                        token_ids=[4, 5],
                        logprobs=[-0.5, -0.25],
                        finish_reason=FinishReason.STOP,
                        model_version=self.model_version,
                    )
                ]
            )
        return out

    async def close(self) -> None:
        return None


async def one_call(task: Task, client: Any) -> str:
    r = await client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": task.prompt}], temperature=1.0
    )
    return r.choices[0].message.content or ""


# --- tests -------------------------------------------------------------------------------------------------


def _run_graph(engine: Any, **cfg: Any) -> Any:
    config = agent_loop.AgentLoopConfig(**cfg)
    return agent_loop.build_graph(engine, VerifierCritic(TS), config)


async def test_agent_loop_through_the_runner_records_every_call_and_credits_the_group(
    store: Any, tiny_model_path: Path
) -> None:
    from strop.agents.engines import load_engine

    engine = load_engine("tiny")
    try:
        graph = _run_graph(engine, entry=f"{HERE}:solve", n=3, seed=5, emit_sft=True, sft_min_reward=0.0)
        res = await Runner(store, concurrency=4, progress=False).run(
            graph, TS.tasks(Split.TRAIN, 2), RunRecord(id="agent-run", loop="agent")
        )
    finally:
        await engine.close()
    assert res.episodes == 2 and res.samples == 6
    assert not rollouts_module._SHARED  # the shared capture server stopped with the run
    for ep in store.list_episodes("agent-run"):
        o = ep.outcome
        assert ep.loop == "agent" and o["n"] == 3 and o["failed"] == 0
        assert [r["status"] for r in o["rollouts"]] == ["finished"] * 3
        assert all(r["calls"] == 2 for r in o["rollouts"])
        assert len(ep.steps) == 6 and [s.index for s in ep.steps] == list(range(6))
        assert sorted({s.metadata["rollout"] for s in ep.steps}) == [0, 1, 2]
        for s in ep.steps:
            assert s.prompt_token_ids and s.token_ids and len(s.logprobs or []) == len(s.token_ids)
            assert s.model_version == engine.model_version
        assert o["drift"]["checked"] == 3  # each rollout's second call is checked against its first
        rewards = [r["reward"] for r in o["rollouts"]]
        assert o["correct"] == sum(rewards)
        kinds = [ex.kind for ex in ep.examples]
        assert kinds.count(ExampleKind.SFT) == 6  # sft_min_reward 0: every call of every rollout
        # pg actions only where the rollout's reward differs from the group's mean
        mean = sum(rewards) / 3
        assert kinds.count(ExampleKind.ADVANTAGE) == 2 * sum(r != mean for r in rewards)
        for ex in ep.examples:
            assert ex.episode_id == ep.id and ex.split == "train"
            if ex.kind == ExampleKind.ADVANTAGE:
                assert ex.payload["temperature"] == 1.0 and ex.payload["advantage"] != 0


async def test_rollouts_that_raise_hang_or_never_call_the_model_fail_with_their_error(
    sqlite_url: str, tiny_model_path: Path
) -> None:
    from strop.agents.engines import load_engine
    from strop.memory import Store

    store = Store(sqlite_url)
    engine = load_engine("tiny")
    try:
        for name in ("raises", "hangs", "never_calls"):
            graph = _run_graph(
                engine, entry=f"{HERE}:{name}", n=2, timeout_s=0.5, emit_sft=True, sft_min_reward=0
            )
            await Runner(store, progress=False).run(
                graph, TS.tasks(Split.TRAIN, 1), RunRecord(id=f"agent-{name}", loop="agent")
            )
    finally:
        await engine.close()
    errors = {}
    for name in ("raises", "hangs", "never_calls"):
        [ep] = store.list_episodes(f"agent-{name}")
        assert ep.outcome["failed"] == 2 and ep.examples == [] and ep.outcome["correct"] == 0
        assert {r["status"] for r in ep.outcome["rollouts"]} == {"failed"}
        errors[name] = ep.outcome["rollouts"][0]["error"]
    assert errors["raises"].startswith("ValueError: the tool broke on arithmetic/")
    assert errors["hangs"] == "timed out after 0.5 s"
    assert errors["never_calls"].startswith("the agent never called the model")
    [raised] = store.list_episodes("agent-raises")
    assert len(raised.steps) == 2  # its calls are kept for inspection, never trained on
    store.close()


async def test_a_seeded_group_gets_seed_s_plus_k_plus_j_n_and_group_relative_advantages() -> None:
    from strop.agents.episode import run_episode

    engine = ParityEngine()
    task = TS.tasks(Split.TRAIN, 1)[0]
    ep = await run_episode(_run_graph(engine, entry=f"{HERE}:one_call", n=4, seed=3), task, "r")
    base = rollouts_module.task_seed(3, task.id)
    assert sorted(engine.seeds) == [base + k for k in range(4)]
    rewards = [r["reward"] for r in ep.outcome["rollouts"]]
    assert sorted(rewards) == [0.0, 0.0, 1.0, 1.0] and ep.outcome["correct"] == 2
    actions = [ex for ex in ep.examples if ex.kind == ExampleKind.ADVANTAGE]
    assert sorted(ex.payload["advantage"] for ex in actions) == [-0.5, -0.5, 0.5, 0.5]
    # reruns address the same ids (from the episode and the rollout, not the capture's random id)
    again = await run_episode(_run_graph(engine, entry=f"{HERE}:one_call", n=4, seed=3), task, "r")
    assert [s.id for s in again.steps] == [s.id for s in ep.steps]
    assert sorted(e.id for e in again.examples) == sorted(e.id for e in ep.examples)
    held = await run_episode(
        _run_graph(engine, entry=f"{HERE}:one_call", n=4, seed=3), TS.tasks(Split.HELDOUT, 1)[0], "r"
    )
    assert held.examples == [] and len(held.steps) == 4


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("no_colon", "give 'module:function'"),
        ("tests.no_such_module:solve", "cannot import 'tests.no_such_module'"),
        (f"{HERE}:missing", "has no attribute 'missing'"),
        (f"{HERE}:not_async", "must be an async function"),
    ],
)
def test_a_bad_entry_is_refused_at_the_config_naming_it(entry: str, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)) as info:
        get_loop("agent").parse_config({"entry": entry})
    assert entry in str(info.value)


def test_an_entry_may_be_a_file(tmp_path: Path) -> None:
    path = tmp_path / "my_agent.py"
    path.write_text("async def run(task, client):\n    return 'x'\n")
    cfg = get_loop("agent").parse_config({"entry": f"{path}:run"})
    assert agent_loop.load_entry(cfg.entry).__name__ == "run"


@pytest.mark.slow
def test_strop_run_agent_with_set_entry(tiny_model_path: Path, tmp_path: Path) -> None:
    from strop.cli import app
    from strop.memory import Store

    db = f"sqlite:///{tmp_path / 's.db'}"
    res = CliRunner().invoke(
        app,
        [
            "run",
            "agent",
            "-m",
            "tiny",
            "--episodes",
            "2",
            "--set",
            f"entry={HERE}:solve",
            "--set",
            "n=2",
            "--db",
            db,
        ],
        env={"COLUMNS": "200"},
    )
    out = " ".join(res.output.split())
    assert res.exit_code == 0, out
    assert "2 episodes, 4 answers" in out
    run_id = re.search(r"run (\S+): agent with tiny", out).group(1)  # type: ignore[union-attr]
    episodes = Store(db).list_episodes(run_id)
    assert len(episodes) == 2 and all(len(ep.steps) == 4 for ep in episodes)
    bad = CliRunner().invoke(app, ["run", "agent", "-m", "tiny", "--set", "entry=nope:x", "--db", db])
    assert bad.exit_code != 0 and "nope:x" in " ".join(bad.output.split())


async def test_the_agent_evaluator_runs_the_agent_on_held_out_tasks(sqlite_url: str) -> None:
    from strop.agents.evaluators import get_evaluator
    from strop.memory import Store
    from strop.memory.records import ModelStatus, ModelVersionRecord

    store = Store(sqlite_url)
    version = store.register_model(
        ModelVersionRecord(name="parity", lineage="parity", path="/nowhere", status=ModelStatus.BASE)
    )
    evaluator = get_evaluator(get_loop("agent").evaluator)
    settings = evaluator.settings(n=2)
    said: list[str] = []
    ctx = SimpleNamespace(
        settings=settings,
        store=store,
        task_set=TS,
        label="arithmetic",
        heldout=3,
        loop=get_loop("agent"),
        loop_config=get_loop("agent").parse_config({"entry": f"{HERE}:one_call"}),
        role="policy",
        serve=lambda v: ParityEngine(),
        runner=lambda: Runner(store, progress=False),
        say=said.append,
    )
    await evaluator.evaluate(version, ctx)  # type: ignore[arg-type]
    metrics = store.get_model(version.id).metrics  # type: ignore[union-attr]
    prefix = evaluator.metric_prefix(ctx)  # type: ignore[arg-type]
    assert prefix == "arithmetic/heldout/agent"
    # seed 0: rollout k samples with S + k, so one of each task's two rollouts is right
    assert metrics[f"{prefix}/accuracy"] == 0.5 and metrics[f"{prefix}/pass@2"] == 1.0
    assert metrics[f"{prefix}/failed"] == 0.0 and metrics[f"{prefix}/n_tasks"] == 3
    assert said and "agent held-out accuracy 50.0%" in said[0]
    store.close()


def test_the_loop_builds_from_uniform_resources() -> None:
    spec = get_loop("agent")
    cfg = spec.parse_config({"entry": f"{HERE}:solve", "n": 2})
    graph = spec.make(LoopResources(engines={"policy": ParityEngine()}, task_set=TS), cfg)
    assert set(graph.nodes) == {"rollouts", "record"}
    assert spec.evaluator == "agent" and ExampleKind.ADVANTAGE in spec.example_kinds


async def test_a_rerun_of_the_run_rolls_out_only_the_tasks_it_had_not_written(store: Any) -> None:
    """A run killed partway leaves the tasks it finished in the store; the same run id started again rolls out
    only the others (the runner's resumption, which the agent loop gets as a registered loop)."""
    engine = ParityEngine()
    tasks = TS.tasks(Split.TRAIN, 4)
    run = RunRecord(id="agent-rerun", loop="agent")
    graph = _run_graph(engine, entry=f"{HERE}:one_call", n=2, seed=0)
    first = await Runner(store, progress=False).run(graph, tasks[:2], run)  # "killed" after two tasks
    assert first.episodes == 2 and len(engine.seeds) == 4
    again = await Runner(store, progress=False).run(graph, tasks, run)
    assert again.episodes_run == 2 and len(engine.seeds) == 8  # only the two unfinished tasks ran
    assert {e.task_id for e in store.list_episodes("agent-rerun")} == {t.id for t in tasks}


def test_strop_run_agent_with_workers_uses_the_stores_queue(tiny_model_path: Path, tmp_path: Path) -> None:
    """The work queue and worker processes apply to the agent loop like to any other loop."""
    from typer.testing import CliRunner

    from strop.cli import app
    from strop.memory import Store

    db = str(tmp_path / "workers.db")
    entry = f"{Path(__file__).resolve()}:one_call"
    res = CliRunner().invoke(
        app,
        [
            *("run", "agent", "-m", "tiny", "--set", f"entry={entry}", "--set", "n=2", "--episodes", "4"),
            *("--workers", "2", "--db", db),
        ],
    )
    assert res.exit_code == 0, res.output
    store = Store(db, create=False)
    try:
        [run] = store.list_runs()
        episodes = store.list_episodes(run.id)
        assert len(episodes) == 4 and all(e.outcome["n"] == 2 and len(e.steps) == 2 for e in episodes)
    finally:
        store.close()


async def test_emit_pairs_prefers_a_better_rollouts_reply_to_the_same_prompt() -> None:
    from strop.agents.episode import run_episode

    task = TS.tasks(Split.TRAIN, 1)[0]
    graph = _run_graph(ParityEngine(), entry=f"{HERE}:one_call", n=4, seed=3, emit_pairs=True)
    ep = await run_episode(graph, task, "r")
    [pair] = [ex for ex in ep.examples if ex.kind == ExampleKind.PAIR]  # one distinct right and wrong text
    a, b = (int(x) for x in re.findall(r"\d+", task.prompt)[:2])
    assert pair.payload["chosen"][0]["content"] == f"#### {a + b}"
    assert pair.payload["rejected"][0]["content"] == f"#### {a + b + 1}"
    assert pair.payload["prompt"][-1]["content"] == task.prompt
    assert pair.episode_id == ep.id and pair.split == "train"
    held = await run_episode(graph, TS.tasks(Split.HELDOUT, 1)[0], "r")
    assert held.examples == []
