"""The runner on both databases: concurrency, one write per episode, resumption after a crash."""

import asyncio
import contextlib

import pytest

from strop.agents.engines.base import Completion, GenerationRequest
from strop.agents.loops import best_of_n
from strop.agents.loops.base import episode_id
from strop.agents.runner import Runner, open_checkpointer
from strop.critics import Critique, VerifierCritic
from strop.memory.records import RunRecord
from strop.sandbox.tasks import ArithmeticTaskSet, Split
from tests.agents.loops.fakes import ScriptedEngine

TS = ArithmeticTaskSet()


class CountingEngine(ScriptedEngine):
    """Holds each generate call until `target` are in flight (or 5 s pass) and records the peak."""

    def __init__(self, target: int) -> None:
        super().__init__()
        self.target = target
        self.in_flight = 0
        self.peak = 0
        self.full = asyncio.Event()

    async def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if self.in_flight >= self.target:
            self.full.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.full.wait(), 5)
        try:
            return await super().generate(requests)
        finally:
            self.in_flight -= 1


async def test_runner_writes_every_episode_concurrently_and_skips_them_on_rerun(store) -> None:
    engine = CountingEngine(target=8)
    tasks = TS.tasks(Split.TRAIN, 12)
    graph = best_of_n.build_graph(engine, VerifierCritic(TS), best_of_n.BestOfNConfig(n=4))
    runner = Runner(store, concurrency=8, progress=False)
    res = await runner.run(graph, tasks, RunRecord(id="run-a", loop="best_of_n"))
    assert engine.peak == 8  # episodes really overlap, so a batching engine can coalesce them
    assert res.episodes == res.episodes_run == 12
    assert (res.samples, res.correct, res.passed, res.examples) == (48, 24, 12, 24)
    assert store.episode_ids("run-a") == {episode_id("run-a", t.id) for t in tasks}
    ep = store.get_episode(episode_id("run-a", tasks[0].id))
    assert len(ep.steps) == 4 and len(ep.critiques) == 4 and len(ep.examples) == 2
    assert store.get_run("run-a").status == "finished"
    assert store.count_examples() == 24

    calls = len(engine.calls)
    again = await runner.run(graph, tasks, RunRecord(id="run-a", loop="best_of_n"))
    assert len(engine.calls) == calls and again.episodes_run == 0 and again.examples == 24


class FlakyCritic(VerifierCritic):
    """Raises once on one task: a crash after that episode's answers were sampled and checkpointed."""

    def __init__(self, fail_on: str) -> None:
        super().__init__(TS)
        self.fail_on: str | None = fail_on

    async def critique(self, task, solution, reference=None) -> Critique:  # type: ignore[no-untyped-def]
        if task.id == self.fail_on:
            self.fail_on = None
            raise RuntimeError("simulated crash")
        return await super().critique(task, solution, reference)


async def test_a_crashed_run_resumes_mid_episode_from_the_checkpoint(store) -> None:
    engine = ScriptedEngine()
    tasks = TS.tasks(Split.TRAIN, 6)
    critic = FlakyCritic(fail_on=tasks[3].id)
    graph = best_of_n.build_graph(engine, critic, best_of_n.BestOfNConfig(n=2))
    runner = Runner(store, concurrency=2, progress=False)
    with pytest.raises(ExceptionGroup):
        await runner.run(graph, tasks, RunRecord(id="run-b", loop="best_of_n"))
    assert store.get_run("run-b").status == "failed"
    written = store.episode_ids("run-b")
    assert episode_id("run-b", tasks[3].id) not in written
    assert engine.calls.count(tasks[3].prompt) == 1
    done_before = [t for t in tasks if episode_id("run-b", t.id) in written]

    res = await runner.run(graph, tasks, RunRecord(id="run-b", loop="best_of_n"))
    assert res.episodes == 6 and res.episodes_run == 6 - len(written)
    # The crashed episode resumed at `verify`: its answers were not sampled again.
    assert engine.calls.count(tasks[3].prompt) == 1
    # Episodes written before the crash were not re-run either. (One that was cancelled inside a node may
    # redo that node: only finished nodes are checkpointed.)
    assert done_before and all(engine.calls.count(t.prompt) == 1 for t in done_before)
    assert store.get_run("run-b").status == "finished"


async def test_checkpoints_of_written_episodes_are_deleted(store) -> None:
    from strop.agents.runner import store_url

    engine = ScriptedEngine()
    tasks = TS.tasks(Split.TRAIN, 2)
    graph = best_of_n.build_graph(engine, VerifierCritic(TS), best_of_n.BestOfNConfig(n=1))
    await Runner(store, progress=False).run(graph, tasks, RunRecord(id="run-c", loop="best_of_n"))
    async with open_checkpointer(store_url(store)) as saver:
        left = [
            c async for c in saver.alist({"configurable": {"thread_id": episode_id("run-c", tasks[0].id)}})
        ]
    assert left == []
