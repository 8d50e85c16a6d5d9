"""Self-correction through the real path: the tiny model, the runner and a real store on SQLite and
PostgreSQL, each feedback kind (HumanEval code run in the jail for execution feedback), exact token
continuation between turns, and a SIGKILL between turns followed by a rerun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from strop.agents.loops import self_correct as sc
from strop.memory.records import AdvantagePayload, RunRecord
from tests.worker_scripts import run_here

REPO = Path(__file__).resolve().parents[3]


async def _run(
    db_url: str, cfg: sc.SelfCorrectConfig, *, n_tasks: int = 4, task_set: object = None, critic: bool = False
) -> tuple[object, list]:
    from strop.agents.engines import load_engine
    from strop.agents.loops.registry import LoopResources
    from strop.agents.runner import Runner
    from strop.memory import Store
    from strop.sandbox.tasks import ArithmeticTaskSet, Split

    ts = task_set or ArithmeticTaskSet()
    store = Store(db_url)
    engine = load_engine("tiny")
    try:
        res = LoopResources(engines={"policy": engine, **({"critic": engine} if critic else {})}, task_set=ts)
        graph = sc.SPEC.make(res, cfg)
        run = RunRecord(id=f"sc-{cfg.feedback}", loop=sc.LOOP_NAME)
        await Runner(store, concurrency=8, progress=False).run(graph, ts.tasks(Split.TRAIN, n_tasks), run)
        return engine, store.list_episodes(run.id)
    finally:
        await engine.close()


@pytest.mark.parametrize("feedback", ["intrinsic", "oracle", "critic"])
async def test_each_feedback_kind_runs_on_the_tiny_model_and_stores_every_turn(
    db_url: str, tiny_model_path: Path, feedback: str
) -> None:
    cfg = sc.SelfCorrectConfig(
        n=2,
        max_tokens=16,
        critic_max_tokens=24,
        feedback=feedback,
        stage=2,
        seed=0,
        skip_zero_advantage=False,
    )
    engine, episodes = await _run(db_url, cfg, critic=feedback == "critic")
    assert len(episodes) == 4
    for ep in episodes:
        assert ep.outcome["n"] == 2 and len(ep.steps) == 4 and ep.outcome["feedback"] == feedback
        by_turn = {(s.metadata["conversation"], s.metadata["turn"]): s for s in ep.steps}
        for i in range(2):
            first, second = by_turn[(i, 1)], by_turn[(i, 2)]
            # The revision read the attempt's own tokens, verbatim, then the feedback turn.
            context = [*first.prompt_token_ids, *first.token_ids]
            assert second.prompt_token_ids[: len(context)] == context
            assert len(second.prompt_token_ids) > len(context)
            assert second.logprobs is not None and len(second.logprobs) == len(second.token_ids)
        assert len(ep.examples) == 4  # one ADVANTAGE example per turn (zero advantages kept here)
        for e in ep.examples:
            p = AdvantagePayload.model_validate(e.payload)
            s = by_turn[(e.payload["metadata"]["conversation"], e.payload["metadata"]["turn"])]
            assert p.prompt_ids == s.prompt_token_ids and p.completion_ids == s.token_ids
        if feedback == "critic":
            assert any(c.critic_version == engine.model_version for c in ep.critiques)


async def test_execution_feedback_runs_the_tests_in_the_jail(sqlite_url: str, tiny_model_path: Path) -> None:
    from strop.sandbox.tasks import Split
    from strop.sandbox.tasks.humaneval import HumanEvalTaskSet

    class Short(HumanEvalTaskSet):  # the tiny model's context is 1024 bytes: its shortest problems
        def tasks(self, split: Split | str, n: int | None = None) -> list:  # type: ignore[override]
            short = sorted(super().tasks(split), key=lambda t: len(t.prompt))
            return short if n is None else short[:n]

    cfg = sc.SelfCorrectConfig(
        n=1, max_tokens=24, feedback="execution", feedback_chars=160, emit="none", seed=0
    )
    _, episodes = await _run(sqlite_url, cfg, n_tasks=2, task_set=Short())
    assert len(episodes) == 2
    for ep in episodes:
        said = ep.steps[0].metadata["feedback_after"]
        assert said.startswith(("Running the tests on your code gave:", "All tests passed."))
        assert ep.critiques[0].critic_version == "verifier" and ep.critiques[0].text  # the jail's verdict


WORKER = textwrap.dedent('''
    import asyncio, os, signal, sys
    from strop.agents.engines import load_engine
    from strop.agents.loops import self_correct as sc
    from strop.agents.runner import Runner
    from strop.critics import VerifierCritic
    from strop.memory import Store
    from strop.memory.records import RunRecord
    from strop.sandbox.tasks import ArithmeticTaskSet, Split

    class Counting:
        """The tiny engine; counts first turns and revisions, and dies at the first revision when told to."""
        def __init__(self, engine, die):
            self.engine, self.die, self.first, self.revisions = engine, die, 0, 0
        @property
        def model_version(self):
            return self.engine.model_version
        async def generate(self, requests):
            for r in requests:
                if r.context_token_ids is None:
                    self.first += 1
                else:
                    self.revisions += 1
                    if self.die:
                        os.kill(os.getpid(), signal.SIGKILL)
            return await self.engine.generate(requests)
        async def close(self):
            await self.engine.close()

    async def main(db, die):
        ts = ArithmeticTaskSet()
        engine = Counting(load_engine("tiny"), die)
        cfg = sc.SelfCorrectConfig(n=2, max_tokens=12, seed=0)
        graph = sc.build_graph(engine, VerifierCritic(ts), cfg)
        run = RunRecord(id="sc-kill", loop=sc.LOOP_NAME)
        # One task at a time: the kill then lands after exactly one task's attempts were checkpointed (with
        # several in flight, another task's attempt could still be unsaved and the count would race).
        await Runner(Store(db), concurrency=1, progress=False).run(graph, ts.tasks(Split.TRAIN, 4), run)
        print("first", engine.first, "revisions", engine.revisions)
        await engine.close()

    asyncio.run(main(sys.argv[1], sys.argv[2] == "die"))
''')


@pytest.mark.timeout(300)
def test_sigkill_between_turns_then_rerun_continues_from_the_checkpoint(
    sqlite_url: str, tmp_path: Path, tiny_model_path: Path
) -> None:
    from strop.memory import Store

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run(
        [sys.executable, str(script), sqlite_url, "die"], capture_output=True, text=True, env=env, timeout=200
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    store = Store(sqlite_url)
    assert store.list_episodes("sc-kill") == []  # nothing half-written
    rerun = run_here(script, sqlite_url, "run")  # in this process: only the dying run needs its own
    assert rerun.returncode == 0, rerun.stderr
    # The first task's attempts (one request, n=2) were checkpointed before the kill: the rerun only revises
    # them, and runs the three other tasks whole (3 attempt requests; 4 tasks x 2 revisions).
    assert "first 3 revisions 8" in rerun.stdout, rerun.stdout
    episodes = store.list_episodes("sc-kill")
    assert len(episodes) == 4 and all(len(ep.steps) == 4 for ep in episodes)
