"""Preference pairs: emitted by best-of-N (`emit_pairs`), derived from stored episodes, exported, balanced."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from typer.testing import CliRunner

from strop.agents.loops import best_of_n
from strop.agents.loops.base import episode_input
from strop.agents.loops.pairs import pair_id
from strop.critics import VerifierCritic
from strop.memory import Store
from strop.memory.records import EpisodeRecord, ExampleKind, ExampleRecord, RunRecord
from strop.sandbox.tasks import ArithmeticTaskSet, Split, Task
from strop.training.pairs import balance_report, derive_pairs, format_balance
from tests.agents.loops.fakes import ScriptedEngine, _sum_of

TS = ArithmeticTaskSet()
SYSTEM = "Answer after ####."


def two_right_three_wrong(prompt: str, i: int) -> str:
    """Six answers: two distinct correct ones, three distinct wrong ones and a repeat of the first wrong one."""
    s = _sum_of(prompt)
    return [
        f"#### {s}",
        f"it is #### {s}",
        f"#### {s + 1}",
        f"#### {s + 2}",
        f"#### {s + 3}",
        f"#### {s + 1}",
    ][i]


async def _episode(cfg: best_of_n.BestOfNConfig, task: Task, run_id: str = "run-1") -> EpisodeRecord:
    engine = ScriptedEngine(answer=two_right_three_wrong)
    out = (
        await best_of_n.build_graph(engine, VerifierCritic(TS), cfg)
        .compile()
        .ainvoke(episode_input(task, run_id))
    )
    return EpisodeRecord.model_validate(out["episode"])


def _pairs(ep: EpisodeRecord) -> list[ExampleRecord]:
    return [x for x in ep.examples if x.kind == ExampleKind.PAIR]


def _texts(x: ExampleRecord) -> tuple[str, str]:
    return x.payload["chosen"][0]["content"], x.payload["rejected"][0]["content"]


async def test_best_of_n_emits_correct_over_incorrect_pairs_deduped_and_capped() -> None:
    task = TS.tasks(Split.TRAIN, 1)[0]
    s = _sum_of(task.prompt)
    ep = await _episode(
        best_of_n.BestOfNConfig(n=6, system_prompt=SYSTEM, emit_pairs=True, max_pairs_per_task=4), task
    )
    pairs = _pairs(ep)
    assert len([x for x in ep.examples if x.kind == ExampleKind.SFT]) == 2  # SFT examples are unchanged
    assert ep.outcome["pairs"] == 4 and ep.outcome["examples"] == 6  # what the runner reports as emitted
    # 2 distinct correct x 3 distinct wrong = 6 pairs; the cap keeps 4, along diagonals so every answer is used.
    assert [_texts(x) for x in pairs] == [
        (f"#### {s}", f"#### {s + 1}"),
        (f"it is #### {s}", f"#### {s + 2}"),
        (f"#### {s}", f"#### {s + 2}"),
        (f"it is #### {s}", f"#### {s + 3}"),
    ]
    assert [x.id for x in pairs] == [pair_id(ep.id, c, r) for c, r in ((0, 2), (1, 3), (0, 3), (1, 4))]
    first = pairs[0]
    assert (
        first.role == "policy"
        and first.split == "train"
        and first.task_id == task.id
        and first.episode_id == ep.id
    )
    assert first.payload == {
        "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": task.prompt}],
        "chosen": [{"role": "assistant", "content": f"#### {s}"}],
        "rejected": [{"role": "assistant", "content": f"#### {s + 1}"}],
    }
    # No cap that bites: all six, each (chosen, rejected) text pair once although "#### s+1" was sampled twice.
    every = _pairs(
        await _episode(best_of_n.BestOfNConfig(n=6, emit_pairs=True, max_pairs_per_task=100), task)
    )
    assert len(every) == 6 and len({_texts(x) for x in every}) == 6
    # Stable ids: a rerun of the same run writes the same pairs.
    again = await _episode(
        best_of_n.BestOfNConfig(n=6, system_prompt=SYSTEM, emit_pairs=True, max_pairs_per_task=4), task
    )
    assert [x.id for x in _pairs(again)] == [x.id for x in pairs]


async def test_no_pairs_from_heldout_tasks_or_without_the_switch() -> None:
    held = await _episode(best_of_n.BestOfNConfig(n=6, emit_pairs=True), TS.tasks(Split.HELDOUT, 1)[0])
    assert held.examples == [] and held.outcome["correct"] == 2 and "pairs" not in held.outcome
    train = TS.tasks(Split.TRAIN, 1)[0]
    off = await _episode(best_of_n.BestOfNConfig(n=6), train)
    assert _pairs(off) == [] and "pairs" not in off.outcome
    only_pairs = await _episode(best_of_n.BestOfNConfig(n=6, emit_examples=False, emit_pairs=True), train)
    assert {x.kind for x in only_pairs.examples} == {ExampleKind.PAIR} and only_pairs.outcome["pairs"] == 4
    # All correct or all wrong: nothing to prefer.
    engine = ScriptedEngine(answer=lambda p, i: f"#### {_sum_of(p)}")
    graph = best_of_n.build_graph(engine, VerifierCritic(TS), best_of_n.BestOfNConfig(n=3, emit_pairs=True))
    out = await graph.compile().ainvoke(episode_input(train, "r"))
    assert out["episode"]["outcome"]["pairs"] == 0


async def test_rationalized_answers_are_chosen_over_the_policys_own_wrong_ones() -> None:
    def answer(
        prompt: str, i: int
    ) -> str:  # wrong without the hint; with it, right (once citing it) or wrong
        if "Hint" not in prompt:
            return f"#### {i}"
        value = prompt.split("the answer is ")[1].rstrip(".)")
        return [f"as the hint says, {value}", f"so it is #### {value}", "#### 999"][i]

    task = TS.tasks(Split.TRAIN, 1)[0]
    cfg = best_of_n.BestOfNConfig(n=3, rationalize=True, emit_pairs=True, max_pairs_per_task=10)
    out = (
        await best_of_n.build_graph(ScriptedEngine(answer=answer), VerifierCritic(TS), cfg)
        .compile()
        .ainvoke(episode_input(task, "r"))
    )
    pairs = _pairs(EpisodeRecord.model_validate(out["episode"]))
    # chosen: the hinted answer that does not cite the hint; rejected: the policy's own (un-hinted) wrong answers.
    assert {_texts(x)[0] for x in pairs} == {f"so it is #### {task.answer}"}
    assert {_texts(x)[1] for x in pairs} == {"#### 0", "#### 1", "#### 2"}
    assert pairs[0].payload["prompt"] == [{"role": "user", "content": task.prompt}]  # the un-hinted prompt


async def test_derive_pairs_from_stored_episodes_matches_the_loop_and_is_idempotent(store: Store) -> None:
    train = TS.tasks(Split.TRAIN, 3)
    held = TS.tasks(Split.HELDOUT, 1)
    cfg = best_of_n.BestOfNConfig(n=6, system_prompt=SYSTEM, max_pairs_per_task=4)
    # A run recorded without the switch (what old stores hold); one task emitted no SFT example (emit_examples off
    # would do the same), and one held-out episode that must never yield pairs.
    run = store.create_run(
        RunRecord(id="old-run", loop="best_of_n", config={"loop": cfg.model_dump(mode="json")})
    )
    eps = [await _episode(cfg, t, run.id) for t in train]
    eps[2] = eps[2].model_copy(update={"examples": []})
    eps.append(await _episode(cfg, held[0], run.id))
    store.write_episodes(eps)
    # The same tasks with the switch on, in another run: what derive_pairs must reproduce.
    want = [_pairs(await _episode(cfg.model_copy(update={"emit_pairs": True}), t, run.id)) for t in train]

    got = derive_pairs(store, [run.id], max_pairs_per_task=4)
    assert (got.episodes, got.with_pairs, got.pairs, got.added) == (4, 2, 8, 8)
    # No SFT example to read the prompt (and split) from and no task given: the third and the held-out episode.
    assert got.skipped_no_prompt == 2 and got.skipped_heldout == 0
    stored = {x.id: x for x in store.list_examples(kind="pair")}
    for ep, expected in zip(eps[:2], want[:2], strict=True):
        for x in expected:
            assert stored[x.id].payload == x.payload and stored[x.id].episode_id == ep.id
            assert stored[x.id].task_id == ep.task_id and stored[x.id].split == "train"

    # Given the tasks, the third episode's prompt is rebuilt with the run's system prompt; the held-out task is
    # recognised as such. Nothing already stored is written twice.
    again = derive_pairs(store, [run.id], max_pairs_per_task=4, tasks=[*train, *held])
    assert (again.pairs, again.added, again.skipped_no_prompt, again.skipped_heldout) == (12, 4, 0, 1)
    third = [x for x in store.list_examples(kind="pair") if x.episode_id == eps[2].id]
    assert [(x.id, x.payload) for x in third] == [(x.id, x.payload) for x in want[2]]
    assert derive_pairs(store, [run.id], tasks=train).added == 0
    assert store.count_examples(kind="pair") == 12

    # An evaluation run never yields pairs, whatever its episodes hold.
    ev = store.create_run(RunRecord(id="eval-run", loop="eval"))
    store.write_episode(await _episode(best_of_n.BestOfNConfig(n=6, system_prompt=SYSTEM), train[0], ev.id))
    assert derive_pairs(store, [ev.id], tasks=train).pairs == 0
    with pytest.raises(ValueError, match="not in the store"):
        derive_pairs(store, ["no-such-run"])


async def test_pairs_emitted_by_the_loop_are_not_derived_twice(store: Store) -> None:
    run = store.create_run(RunRecord(loop="best_of_n"))
    task = TS.tasks(Split.TRAIN, 1)[0]
    store.write_episode(await _episode(best_of_n.BestOfNConfig(n=6, emit_pairs=True), task, run.id))
    assert store.count_examples(kind="pair") == 4
    got = derive_pairs(store, [run.id])
    assert got.pairs == 4 and got.added == 0


def test_balance_report() -> None:
    def pair(task: str, chosen: str, rejected: str) -> ExampleRecord:
        return ExampleRecord(
            kind=ExampleKind.PAIR,
            task_id=task,
            payload={
                "prompt": [{"role": "user", "content": "q"}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            },
        )

    examples = [
        pair("a", "one two three", "one"),
        pair("a", "one two", "one two"),
        pair("a", "x y z w", "x"),
        pair("b", "one", "one two three"),
    ]
    report = balance_report(examples)
    assert report["pairs"] == 4 and report["tasks"] == 2
    assert report["pairs_per_task"] == {"min": 1, "median": 2.0, "max": 3}
    assert (
        report["chosen_tokens"] == 2.5 and report["rejected_tokens"] == 1.75 and report["length_bias"] == 0.75
    )
    assert report["chosen_longer"] == 0.5
    assert "4 pairs over 2 tasks" in format_balance(report) and "+0.8" in format_balance(report)
    # A real tokenizer counts tokens, not words.
    assert balance_report(examples, count_tokens=len)["chosen_tokens"] == pytest.approx((13 + 7 + 7 + 3) / 4)
    empty = balance_report([])
    assert empty["pairs"] == 0 and empty["pairs_per_task"]["max"] == 0


async def test_export_kind_dpo_writes_jsonl_that_datasets_loads(
    store: Store, db_url: str, tmp_path: Path
) -> None:
    from strop.cli.commands.db import app as db_app

    run = store.create_run(RunRecord(loop="best_of_n"))
    for t in TS.tasks(Split.TRAIN, 3):
        store.write_episode(
            await _episode(best_of_n.BestOfNConfig(n=6, system_prompt=SYSTEM, emit_pairs=True), t, run.id)
        )
    out = tmp_path / "dpo.jsonl"
    result = CliRunner().invoke(db_app, ["export", "--kind", "dpo", "--out", str(out), "--db", db_url])
    assert result.exit_code == 0, result.output
    assert "wrote 12 dpo examples" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and list(rows[0]) == ["prompt", "chosen", "rejected"]
    datasets.disable_progress_bars()
    ds = datasets.load_dataset("json", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.column_names == ["prompt", "chosen", "rejected"] and len(ds) == 12
    assert ds[0]["prompt"][-1]["role"] == "user" and ds[0]["chosen"][0]["role"] == "assistant"
    assert ds[0]["rejected"] == rows[0]["rejected"]
