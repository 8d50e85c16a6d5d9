"""One bad item never sinks a run: a loop node that raises on one task's data, or an engine that refuses one
prompt, becomes a FAILED episode with its reason, counted and kept; the other episodes are scored. A run
whose every episode fails stops with one message and records nothing, so it can be run again once fixed.
Bugs, infrastructure faults and interrupts still stop the run. The store part runs on SQLite and PostgreSQL;
the refusal comes from the real tiny model's context window."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from strop.agents.engines.base import EngineError, PromptTooLongError
from strop.agents.episode import EpisodeContractError, EpisodeFailure, item_failure
from strop.agents.loops import best_of_n
from strop.agents.loops.base import episode_id
from strop.agents.runner import RunFailedError, Runner, run_summary
from strop.cli.common import UserErrorGroup
from strop.critics import Critique, VerifierCritic
from strop.memory.errors import HeldoutLeakError
from strop.memory.records import EpisodeStatus, RunRecord
from strop.sandbox.tasks import ArithmeticTaskSet, Split, Task
from strop.sandbox.tasks.guard import HeldoutTaskError
from tests.agents.loops.fakes import ScriptedEngine

TS = ArithmeticTaskSet()


class BrokenOn(VerifierCritic):
    """Raises `error` while judging the tasks in `bad` (a loop node failing on those tasks' data)."""

    def __init__(self, bad: set[str], error: type[Exception] = ValueError) -> None:
        super().__init__(TS)
        self.bad, self.error = bad, error

    async def critique(self, task, solution, reference=None) -> Critique:  # type: ignore[no-untyped-def]
        if task.id in self.bad:
            raise self.error(f"task {task.id} has a malformed reference")
        return await super().critique(task, solution, reference)


def _graph(engine: ScriptedEngine, critic: VerifierCritic) -> Any:
    return best_of_n.build_graph(engine, critic, best_of_n.BestOfNConfig(n=2))


async def test_a_node_raising_on_one_task_fails_that_episode_and_the_run_goes_on(store) -> None:
    engine = ScriptedEngine()
    tasks = TS.tasks(Split.TRAIN, 5)
    bad = tasks[2]
    graph = _graph(engine, BrokenOn({bad.id}))
    runner = Runner(store, concurrency=5, progress=False)
    res = await runner.run(graph, tasks, RunRecord(id="iso", loop="best_of_n"))
    assert (res.episodes, res.failed, res.scored, res.passed) == (5, 1, 4, 4)
    assert res.failures == {"invalid": 1} and "malformed reference" in res.failure_reasons["invalid"]
    assert res.pass_rate == 1.0 and res.skipped_line() == "skipped: 1, invalid for this item"
    failed = store.get_episode(episode_id("iso", bad.id))
    assert failed.status == EpisodeStatus.FAILED and not failed.steps and not failed.examples
    assert failed.outcome["error_kind"] == "invalid" and failed.outcome["error_type"] == "ValueError"
    assert store.get_run("iso").status == "finished"
    # Done work, not retried: a rerun runs nothing and reports the same totals (the store keeps them).
    calls = len(engine.calls)
    again = await runner.run(graph, tasks, RunRecord(id="iso", loop="best_of_n"))
    assert again.episodes_run == 0 and len(engine.calls) == calls
    assert (again.failed, again.failures, again.passed) == (1, {"invalid": 1}, 4)
    assert (await run_summary(store, "iso")).failed == 1


async def test_when_every_episode_fails_the_run_stops_with_one_message_and_records_none(store) -> None:
    tasks = TS.tasks(Split.TRAIN, 3)
    graph = _graph(ScriptedEngine(), BrokenOn({t.id for t in tasks}))
    runner = Runner(store, progress=False)
    with pytest.raises(RunFailedError) as err:
        await runner.run(graph, tasks, RunRecord(id="all", loop="best_of_n"))
    message = str(err.value)
    assert "every episode of run all failed (3 invalid for this item)" in message
    assert "malformed reference" in message and "\n" not in message
    assert store.get_run("all").status == "failed" and store.episode_ids("all") == set()
    # Nothing was recorded as failed, so the same run, once its cause is fixed, runs every item.
    fixed = await runner.run(
        _graph(ScriptedEngine(), BrokenOn(set())), tasks, RunRecord(id="all", loop="best_of_n")
    )
    assert (fixed.episodes_run, fixed.failed, fixed.passed) == (3, 0, 3)


@pytest.mark.parametrize("error", [TypeError, KeyError, RuntimeError])
async def test_a_bug_in_a_node_still_stops_the_run(store, error: type[Exception]) -> None:
    tasks = TS.tasks(Split.TRAIN, 3)
    graph = _graph(ScriptedEngine(), BrokenOn({tasks[1].id}, error))
    with pytest.raises(ExceptionGroup) as err:
        await Runner(store, progress=False).run(graph, tasks, RunRecord(id="bug", loop="best_of_n"))
    assert err.group_contains(error)
    assert store.get_run("bug").status == "failed"
    assert all(store.get_episode(e).status == EpisodeStatus.FINISHED for e in store.episode_ids("bug"))


async def test_a_loop_that_breaks_its_contract_stops_the_run(store) -> None:
    from langgraph.graph import END, START, StateGraph

    from strop.agents.loops.base import EpisodeInput

    graph = StateGraph(EpisodeInput)
    graph.add_node("noop", lambda state: {})
    graph.add_edge(START, "noop")
    graph.add_edge("noop", END)
    with pytest.raises(ExceptionGroup) as err:
        await Runner(store, progress=False).run(graph, TS.tasks(Split.TRAIN, 2), RunRecord(id="c", loop="x"))
    assert err.group_contains(EpisodeContractError)


def test_what_counts_as_the_items_fault() -> None:
    assert item_failure(PromptTooLongError("the prompt is 2000 tokens"))[0] == "too_long"  # type: ignore[index]
    assert item_failure(ValueError("bad\n  data")) == ("invalid", "bad data")
    assert item_failure(EpisodeFailure("no legal move", kind="no_moves")) == ("no_moves", "no legal move")
    assert item_failure(ExceptionGroup("g", [ValueError("a"), PromptTooLongError("b")])) == ("invalid", "a")

    class Status400(Exception):
        status_code = 400

    refused = EngineError("the server answered 400 (bad request)")
    refused.__cause__ = Status400()
    assert item_failure(refused)[0] == "refused"  # type: ignore[index]
    # Not the item's: the engine or server down, interrupts, bugs, the store's and the held-out guard's errors.
    for exc in (
        EngineError("no answer from http://127.0.0.1:1/v1 after 3 attempts"),
        EngineError("this engine is closed"),
        KeyboardInterrupt(),
        asyncio.CancelledError(),
        SystemExit(1),
        TypeError("x"),
        KeyError("x"),
        EpisodeContractError("no episode"),
        HeldoutLeakError("leak"),
        HeldoutTaskError("held out"),
        ExceptionGroup("g", [ValueError("a"), TypeError("b")]),
    ):
        assert item_failure(exc) is None, exc
    long = item_failure(ValueError("x" * 5000))
    assert long is not None and len(long[1]) == 500


async def test_the_tiny_models_context_refuses_one_prompt_and_the_rest_are_answered(
    tiny_model_path: Path, sqlite_url: str
) -> None:
    from strop.agents.engines import load_engine
    from strop.memory import Store

    store = Store(sqlite_url)
    engine = load_engine(str(tiny_model_path), model_version="tiny")
    tasks = TS.tasks(Split.HELDOUT, 3)
    huge = Task(id="huge", set_name="arithmetic", split=Split.HELDOUT, prompt="1 + 1 = ? " * 2000, answer="2")
    try:
        graph = best_of_n.build_graph(
            engine, VerifierCritic(TS), best_of_n.BestOfNConfig(n=1, temperature=0.0, max_tokens=8)
        )
        res = await Runner(store, progress=False).run(
            graph, [*tasks, huge], RunRecord(id="ctx", loop="best_of_n")
        )
    finally:
        await engine.close()
    assert (res.episodes, res.failed, res.scored, res.samples) == (4, 1, 3, 3)
    assert res.failures == {"too_long": 1} and "context window" in res.failure_reasons["too_long"]
    assert res.skipped_line() == "skipped: 1, too long for the context" and res.tokens > 0
    ep = store.get_episode(episode_id("ctx", "huge"))
    assert ep.status == EpisodeStatus.FAILED and ep.outcome["error_type"] == "PromptTooLongError"
    store.close()


def test_a_user_error_from_any_command_is_one_line_and_a_bug_keeps_its_traceback() -> None:
    app = typer.Typer(cls=UserErrorGroup)

    @app.command()
    def long() -> None:
        raise ExceptionGroup("episodes", [PromptTooLongError("the prompt is 2000 tokens\nover 1024")])

    @app.command()
    def bug() -> None:
        raise TypeError("a bug")

    out = CliRunner().invoke(app, ["long"])
    assert out.exit_code == 1 and out.output == "error: the prompt is 2000 tokens over 1024\n"
    out = CliRunner().invoke(app, ["bug"])
    assert out.exit_code == 1 and isinstance(out.exception, TypeError)


async def test_the_checkpointer_survives_its_postgresql_connection_being_dropped(pg_url: str) -> None:
    """The chaos run's finding: LangGraph's one-connection saver failed every later episode once the server
    dropped it (pg_terminate_backend, a restart). The pooled saver replaces the dead connection."""
    import uuid

    import psycopg
    from langgraph.checkpoint.base import empty_checkpoint

    from strop.agents.runner import open_checkpointer
    from tests.fixtures_db import PG_ADMIN

    app = f"strop_ckpt_{uuid.uuid4().hex[:8]}"
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    async with open_checkpointer(f"{pg_url}&application_name={app}") as saver:
        await saver.aput(config, empty_checkpoint(), {"source": "input", "step": -1}, {})
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
                (app,),
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        assert (await saver.aget_tuple(config)) is not None  # a fresh connection, the checkpoint still there
