"""The MCTS loop through the real path: the tiny model expands steps from exact token ids, rollouts are checked
by the verifier, the whole tree is stored and reloads intact, the token budget is kept, step pairs come from
sibling Q gaps, and a search killed mid-tree resumes from its checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from strop.agents.loops import mcts
from strop.agents.loops.base import episode_input
from strop.agents.loops.mcts_record import tree_from_steps, value_examples
from strop.agents.search import sibling_pairs
from strop.critics import VerifierCritic
from strop.memory.records import EpisodeRecord, ExampleKind, RunRecord
from strop.sandbox.tasks import ArithmeticTaskSet, Split
from tests.worker_scripts import run_here

REPO = Path(__file__).resolve().parents[3]
TS = ArithmeticTaskSet()
# The tiny model was pre-trained without a system prompt.
CFG = mcts.MCTSConfig(
    system_prompt=None,
    k=3,
    budget_tokens=300,
    max_step_tokens=24,
    rollout_max_tokens=32,
    temperature=1.0,
    min_q_gap=0.1,
    seed=0,
)


async def test_search_stores_the_whole_tree_and_it_reloads_intact(tiny_model_path: Path) -> None:
    from strop.agents.engines import load_engine

    engine = load_engine("tiny")
    try:
        graph = mcts.build_graph(engine, VerifierCritic(TS), CFG).compile()
        out = await graph.ainvoke(episode_input(TS.tasks(Split.TRAIN, 1)[0], "run-1"))
    finally:
        await engine.close()
    ep = EpisodeRecord.model_validate(out["episode"])
    final = mcts.Tree.from_json(out["tree"])
    assert tree_from_steps(ep.steps) == final  # every node, parent, token, visit, value and reward
    root = final.root
    assert root.visits == sum(
        final.nodes[i].visits for i in root.children
    )  # each visit passed through one child
    # identical samples merge into one child, so a peaked model may give fewer than k
    assert 1 <= len(root.children) <= CFG.k and ep.outcome["nodes"] == len(final.nodes) >= 2
    for node in final.nodes[1:]:
        # a node's context is the prompt plus its ancestors' own tokens: nothing was re-tokenized
        assert node.token_ids and len(node.logprobs) == len(node.token_ids)
    assert ep.outcome["tokens"] >= 1 and (
        ep.outcome["tokens"] >= CFG.budget_tokens or all(n.terminal for n in final.leaves())
    )
    pairs = [e for e in ep.examples if e.kind == ExampleKind.PAIR]
    assert len(pairs) == min(len(sibling_pairs(final, min_gap=0.1)), CFG.max_pairs_per_task)
    for p in pairs:
        assert p.payload["chosen"][0]["content"] != p.payload["rejected"][0]["content"]


def test_tree_values_become_step_scorer_examples() -> None:
    from strop.agents.search import Tree

    tree = Tree()
    good = tree.add_child(0, "Step 1: 1 + 1 = 2\n")
    bad = tree.add_child(0, "Step 1: 1 + 1 = 3\n")
    for _ in range(2):
        tree.backpropagate(good.id, 1.0)
        tree.backpropagate(bad.id, 0.0)
    task = TS.tasks(Split.TRAIN, 1)[0]
    examples = value_examples(mcts.MCTSConfig(emit_values=True), task, "ep", tree)
    assert [(e.role, e.payload["completion"][0]["content"]) for e in examples] == [
        ("critic", "Yes"),
        ("critic", "No"),
    ]
    assert examples[0].payload["prompt"][-1]["content"].endswith("Is step 1 correct? Answer Yes or No.")
    # A tree where nothing ever succeeded labels nothing (every Q is 0, right step or not), unless asked to.
    failed = Tree()
    for text in ("Step 1: 1 + 1 = 2\n", "Step 1: 1 + 1 = 3\n"):
        node = failed.add_child(0, text)
        for _ in range(2):
            failed.backpropagate(node.id, 0.0)
    assert value_examples(mcts.MCTSConfig(emit_values=True), task, "ep", failed) == []
    loose = mcts.MCTSConfig(emit_values=True, value_only_solved=False)
    labels = [e.payload["completion"][0]["content"] for e in value_examples(loose, task, "ep", failed)]
    assert labels == ["No"] * 2


async def test_the_budget_stops_the_search(tiny_model_path: Path) -> None:
    from strop.agents.engines import load_engine

    engine = load_engine("tiny")
    cfg = CFG.model_copy(update={"budget_tokens": 1, "max_depth": 8})
    try:
        out = (
            await mcts.build_graph(engine, VerifierCritic(TS), cfg)
            .compile()
            .ainvoke(episode_input(TS.tasks(Split.TRAIN, 1)[0], "run-1"))
        )
    finally:
        await engine.close()
    assert out["iteration"] == 1  # one expansion already spends more than one token


async def test_finish_answers_a_search_cut_short_within_its_budget(tiny_model_path: Path) -> None:
    """With finish, a budget too small to reach an answer still ends in one terminal node: the best partial
    solution completed greedily, inside the budget (its reserve); without it, such a search has no answer."""
    from strop.agents.engines import load_engine
    from strop.agents.search import Tree

    engine = load_engine("tiny")
    task = TS.tasks(Split.TRAIN, 1)[0]
    cfg = CFG.model_copy(
        update={
            "budget_tokens": 60,
            "rollout_max_tokens": 24,
            "max_depth": 8,
            "finish": True,
            "evaluation": "rollout",
        }
    )
    try:
        out = (
            await mcts.build_graph(engine, VerifierCritic(TS), cfg)
            .compile()
            .ainvoke(episode_input(task, "run-1"))
        )
        bare = (
            await mcts.build_graph(engine, VerifierCritic(TS), cfg.model_copy(update={"finish": False}))
            .compile()
            .ainvoke(episode_input(task, "run-2"))
        )
    finally:
        await engine.close()
    tree = Tree.from_json(out["tree"])
    terminals = [n for n in tree.nodes if n.terminal]
    assert terminals and out["episode"]["outcome"]["best"] is not None
    assert out["tokens"] <= cfg.budget_tokens + cfg.max_step_tokens * cfg.k  # one expansion may overshoot
    if not any(n.terminal for n in Tree.from_json(bare["tree"]).nodes):
        assert bare["episode"]["outcome"]["best"] is None  # what finish is for
    # The finishing rollout continues its leaf's exact ids: its node holds only its own tokens.
    last = tree.nodes[-1]
    assert last.terminal and last.token_ids and len(last.logprobs) == len(last.token_ids)


async def test_held_out_trees_emit_nothing_and_scorer_evaluation_needs_a_scorer(
    db_url: str, tiny_model_path: Path
) -> None:
    from strop.agents.engines import load_engine
    from strop.agents.runner import Runner
    from strop.memory import Store

    engine = load_engine("tiny")
    store = Store(db_url)
    try:
        graph = mcts.build_graph(engine, VerifierCritic(TS), CFG)
        res = await Runner(store, concurrency=4, progress=False).run(
            graph, TS.tasks(Split.HELDOUT, 3), RunRecord(id="mcts-h", loop="mcts")
        )
    finally:
        await engine.close()
    assert res.episodes == 3 and res.examples == 0
    assert all(len(ep.steps) == ep.outcome["nodes"] for ep in store.list_episodes("mcts-h"))
    with pytest.raises(ValueError, match="needs a step scorer"):
        mcts.build_graph(engine, VerifierCritic(TS), mcts.MCTSConfig(evaluation="scorer"))


WORKER = textwrap.dedent('''
    import asyncio, os, signal, sys
    from strop.agents.engines import load_engine
    from strop.agents.loops import mcts
    from strop.agents.runner import Runner
    from strop.critics import VerifierCritic
    from strop.memory import Store
    from strop.memory.records import RunRecord
    from strop.sandbox.tasks import ArithmeticTaskSet, Split

    class Dying:
        """The tiny engine; dies at call number `die` (0: never)."""
        def __init__(self, engine, die):
            self.engine, self.die, self.calls = engine, die, 0
        @property
        def model_version(self):
            return self.engine.model_version
        async def generate(self, requests):
            self.calls += 1
            if self.calls == self.die:
                os.kill(os.getpid(), signal.SIGKILL)
            return await self.engine.generate(requests)
        async def close(self):
            await self.engine.close()

    async def main(db, die):
        ts = ArithmeticTaskSet()
        engine = Dying(load_engine("tiny"), die)
        cfg = mcts.MCTSConfig(system_prompt=None, k=2, budget_tokens=400, max_step_tokens=24,
                              rollout_max_tokens=32, temperature=1.0, seed=0)
        run = RunRecord(id="mcts-kill", loop="mcts")
        await Runner(Store(db), concurrency=1, progress=False).run(
            mcts.build_graph(engine, VerifierCritic(ts), cfg), ts.tasks(Split.TRAIN, 1), run)
        print("calls", engine.calls)
        await engine.close()

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
''')


@pytest.mark.timeout(300)
def test_a_search_killed_mid_tree_resumes_from_its_checkpoint(
    sqlite_url: str, tmp_path: Path, tiny_model_path: Path
) -> None:
    from strop.memory import Store

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # The full search first: how many engine calls it makes depends on how peaked the tiny model is.
    full = run_here(
        script, sqlite_url.replace("strop.db", "fresh.db"), "0"
    )  # only the dying run is a process
    assert full.returncode == 0, full.stderr
    calls_full = int(full.stdout.split("calls")[1])
    assert calls_full >= 2
    # Killed at its last call: the iterations before it are checkpointed, the one in flight is not.
    killed = subprocess.run(
        [sys.executable, str(script), sqlite_url, str(calls_full)],
        capture_output=True,
        text=True,
        env=env,
        timeout=200,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert Store(sqlite_url).list_episodes("mcts-kill") == []
    rerun = run_here(script, sqlite_url, "0")
    assert rerun.returncode == 0, rerun.stderr
    calls_rerun = int(rerun.stdout.split("calls")[1])
    assert calls_rerun < calls_full  # the iterations done before the kill were not searched again
    [a] = Store(sqlite_url).list_episodes("mcts-kill")
    [b] = Store(sqlite_url.replace("strop.db", "fresh.db")).list_episodes("mcts-kill")
    assert [s.text for s in a.steps] == [s.text for s in b.steps]  # seeded: the resumed tree is the same tree
