"""The SPC game through the real path: the tiny model in every role, the runner and a real store on SQLite and
PostgreSQL, a SIGKILL before the critic judges followed by a rerun, and an evolve stage that trains the critic
with DPO on the game's pairs and gates it on the held-out critic benchmark (as a PRM)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from strop.agents.loops import sneaky
from strop.memory.records import AdvantagePayload, ExampleKind, Role, RunRecord
from tests.worker_scripts import run_here

REPO = Path(__file__).resolve().parents[3]
# The tiny model was pre-trained without a system prompt; its answers are mostly not steps, so the game
# exercises unparsed rewrites, rollouts and unparsed judgements.
TINY = {
    "seed": 0,
    "system_prompt": None,
    "shots": 0,
    "steps_per_task": 2,
    "rollouts": 2,
    "rollout_max_tokens": 16,
    "generator_max_tokens": 24,
    "critic_max_tokens": 24,
}


async def test_the_tiny_model_plays_every_role_through_the_runner_into_the_store(
    db_url: str, tiny_model_path: Path
) -> None:
    from strop.agents.engines import load_engine
    from strop.agents.loops.registry import LoopResources
    from strop.agents.runner import Runner
    from strop.memory import Store
    from strop.sandbox.tasks import ArithmeticTaskSet, Split

    ts = ArithmeticTaskSet(steps=2)
    store = Store(db_url)
    engine = load_engine("tiny")
    cfg = sneaky.SneakyConfig(**TINY, correct_share=0.5, judgements=2, complete_pairs=True)
    try:
        graph = sneaky.SPEC.make(
            LoopResources(
                engines={"policy": engine, "critic": engine, "generator": engine}, task_set=ts, store=store
            ),
            cfg,
        )
        res = await Runner(store, concurrency=4, progress=False).run(
            graph, ts.tasks(Split.TRAIN, 4), RunRecord(id="spc", loop=sneaky.LOOP_NAME)
        )
    finally:
        await engine.close()
    episodes = store.list_episodes("spc")
    assert res.episodes == 4 and res.samples == sum(ep.outcome["n"] for ep in episodes)
    for ep in episodes:
        assert ep.outcome["slots"] == 2
        for s in ep.steps:
            if s.role in ("generator", "critic", "rollout", "control_rollout"):
                assert s.prompt_token_ids and s.model_version == engine.model_version
                assert len(s.logprobs or []) == len(s.token_ids or [])
        judged = {s.parent_id for s in ep.steps if s.role == "critic"}
        assert judged == {s.id for s in ep.steps if s.role == "target" or s.metadata.get("status") == "wrong"}
        for e in ep.examples:
            if e.kind == ExampleKind.GAME_TURN:
                p = AdvantagePayload.model_validate(e.payload)
                assert p.completion_ids and p.advantage != 0
            else:
                assert e.role == Role.CRITIC and e.payload["chosen"] != e.payload["rejected"]
    assert store.count_examples(Role.CRITIC, ExampleKind.PAIR) > 0  # complete_pairs: every judged step pairs
    assert sneaky.SPEC.summarize([*episodes]).startswith("sneaky ")  # type: ignore[misc]
    store.close()


WORKER = textwrap.dedent('''
    import asyncio, json, os, signal, sys
    from strop.agents.engines import load_engine
    from strop.agents.loops import sneaky
    from strop.agents.runner import Runner
    from strop.critics import VerifierCritic
    from strop.memory import Store
    from strop.memory.records import RunRecord
    from strop.sandbox.tasks import ArithmeticTaskSet, Split

    class Counting:
        """The tiny engine under one role's name; counts requests and calls, and dies at call `die_at`."""
        def __init__(self, engine, die_at=None):
            self.engine, self.die_at, self.requests, self.calls = engine, die_at, 0, 0
        @property
        def model_version(self):
            return self.engine.model_version
        async def generate(self, requests):
            self.calls += 1
            if self.calls == self.die_at:
                os.kill(os.getpid(), signal.SIGKILL)
            self.requests += len(requests)
            return await self.engine.generate(requests)
        async def close(self):
            pass

    async def main(db, die):
        ts = ArithmeticTaskSet(steps=2)
        tiny = load_engine("tiny")
        # The critic judges the second episode with its second call: dies there, after that episode's rewrites
        # and rollouts were checkpointed (one episode at a time, so the first is written whole by then).
        generator, policy, critic = Counting(tiny), Counting(tiny), Counting(tiny, 2 if die else None)
        cfg = sneaky.SneakyConfig(**json.loads(sys.argv[3]))
        graph = sneaky.build_graph(policy, critic, VerifierCritic(ts), cfg, generator=generator)
        run = RunRecord(id="spc-kill", loop=sneaky.LOOP_NAME)
        await Runner(Store(db), concurrency=1, progress=False).run(graph, ts.tasks(Split.TRAIN, 2), run)
        print(json.dumps({"generator": generator.requests, "policy": policy.requests, "critic": critic.requests,
                          "critic_calls": critic.calls}))
        await tiny.close()

    asyncio.run(main(sys.argv[1], sys.argv[2] == "die"))
''')


def _played(db_url: str) -> list:
    from strop.memory import Store

    store = Store(db_url)
    episodes = sorted(store.list_episodes("spc-kill"), key=lambda e: e.task_id)
    out = [
        [(s.role, s.text, s.token_ids, s.reward) for s in ep.steps] + [sorted(e.id for e in ep.examples)]
        for ep in episodes
    ]
    store.close()
    return out


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigkill_before_the_critic_judges_then_rerun_plays_the_same_game(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def worker(db: str, mode: str, seed: int) -> subprocess.CompletedProcess[str]:
        # Without the control, the tiny model's failing rollouts make its rewrites count, so both are judged.
        cfg = {**TINY, "control": False, "correct_share": 0.5, "judgements": 2, "seed": seed}
        if mode != "die":  # only the dying run needs a process of its own
            return run_here(script, db, mode, json.dumps(cfg))
        return subprocess.run(
            [sys.executable, str(script), db, mode, json.dumps(cfg)],
            capture_output=True,
            text=True,
            env=env,
            timeout=180,
        )

    # A seed whose game has the critic judge both episodes (the kill comes at its second call): which rewrites
    # count depends on the tiny model's samples, and the tiny model is rebuilt on each machine, so the test
    # looks for one instead of hard-coding it. (Whether rollouts are needed also depends on the samples.)
    for seed in range(8):
        reference = f"sqlite:///{tmp_path / f'reference-{seed}.db'}"
        done = worker(reference, "run", seed)
        assert done.returncode == 0, done.stderr
        calls = json.loads(done.stdout.strip().splitlines()[-1])
        if calls["generator"] > 0 and calls["critic_calls"] >= 2:
            break
    else:
        pytest.fail(f"no seed in 0-7 had the critic judge both episodes: {calls}")

    db = f"sqlite:///{tmp_path / 'killed.db'}"
    killed = worker(db, "die", seed)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(_played(db)) == 1  # the first episode, whole; nothing of the second
    rerun = worker(db, "run", seed)
    assert rerun.returncode == 0, rerun.stderr
    again = json.loads(rerun.stdout.strip().splitlines()[-1])
    # The second episode's rewrites and rollouts were checkpointed before the kill: the rerun only judges.
    assert again["generator"] == again["policy"] == 0 and 0 < again["critic"] < calls["critic"]
    assert _played(db) == _played(reference)  # seeded: the same game, step for step


def spc_recipe(tmp_path: Path) -> Path:
    text = f'''name = "tiny-spc"
cycles = 1
output_dir = "{tmp_path / "run"}"

[roles]
policy = "tiny"
critic = "policy"
generator = "policy"

[[stages]]
name = "critic"
loop = "sneaky"
concurrency = 8
tasks = {{ name = "arithmetic", options = {{ steps = 2 }}, train_per_cycle = 4, heldout = 4 }}
config = {{ seed = 0, system_prompt = "", shots = 0, steps_per_task = 2, rollouts = 1, rollout_max_tokens = 8, generator_max_tokens = 16, judgements = 1, complete_pairs = true, critic_emit = ["pair"], control = false }}

[stages.train]
kind = "dpo"
role = "critic"
settings = {{ epochs = 1, batch_size = 4, learning_rate = 1e-3, max_length = 512, lora = {{ r = 4, alpha = 8 }} }}

[stages.eval]
target = "critic"
margin = 0.0
policy_accuracy = false
'''
    p = tmp_path / "spc.toml"
    p.write_text(text)
    return p


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_an_evolve_stage_trains_the_critic_on_the_game_and_gates_it_on_the_benchmark(
    sqlite_url: str, tmp_path: Path, tiny_model_path: Path
) -> None:
    from strop.agents.loops.sneaky_record import game_rates, summarize
    from strop.memory import Store
    from strop.memory.records import ModelStatus
    from strop.training.evolve import Evolution, StagePhase
    from strop.training.recipe import load_recipe

    store = Store(sqlite_url)
    evo = Evolution(load_recipe(spc_recipe(tmp_path)), store, progress=False)
    rows = await evo.run()
    assert evo.metric(0) == "arithmetic[steps=2]/prm/f1"  # the loop's Yes/No critic is measured as a PRM
    episodes = store.list_episodes(evo.collect_run_id(1, 0))
    assert [e.loop for e in episodes] == ["sneaky"] * 4
    rates = game_rates(episodes)
    # Steps were judged, so the critic has pairs to learn from. Whether any of the tiny model's 4-8 rewrites is
    # really wrong depends on its samples (the tiny model is rebuilt per machine); the runner test above and
    # the kill test cover judging sneaky steps.
    assert rates["judged_sneaky"] + rates["judged_correct"] > 0
    assert rows[-1].phase == StagePhase.DONE and rows[-1].examples > 0
    cand = store.get_model(evo.candidate_id(1, 0))
    assert cand is not None and cand.status in (ModelStatus.PROMOTED, ModelStatus.REJECTED)
    assert "arithmetic[steps=2]/prm/n_tasks" in cand.metrics and "arithmetic[steps=2]/prm/f1" in cand.metrics
    assert store.count_examples(Role.CRITIC, ExampleKind.PAIR, unconsumed_by="critic:dpo") == 0
    table = (tmp_path / "run" / "table.md").read_text()
    assert "collection" in table and rows[-1].collection == summarize(episodes)
    store.close()
