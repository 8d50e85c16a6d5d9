"""The SPC game (sneaky generator vs step critic) on scripted engines: which rewrites count as really wrong, the
zero-sum bookkeeping, unparseable rewrites, rollouts with their control, held-out tasks, the examples each role
gets. The real path (tiny model, runner, both databases, kill and rerun, an evolve stage) is in
tests/agents/loops/test_sneaky_real.py."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from pydantic import ValidationError

from strop.agents.loops import sneaky
from strop.agents.loops.base import episode_input
from strop.agents.loops.registry import get_loop
from strop.agents.loops.sneaky_record import game_rates, summarize
from strop.agents.loops.sneaky_rules import check_rewrite, plan_slots
from strop.critics import VerifierCritic
from strop.memory.records import AdvantagePayload, EpisodeRecord, ExampleKind, Role
from strop.sandbox.tasks import ArithmeticTaskSet, Split
from tests.agents.loops.fakes import ScriptedEngine

TS = ArithmeticTaskSet(steps=2)
TASK = TS.tasks(Split.TRAIN, 1)[0]  # 'What is (30 + 45) + 83?': '30 + 45 = 75', '75 + 83 = 158'
SLOT = {
    "slot": 0,
    "position": 1,
    "error_type": "calculation",
    "target": "sneaky",
    "prefix": TASK.reference_steps[:1],
    "original": TASK.reference_steps[1],
}


def off_by_one(prompt: str, i: int) -> str:
    """A rewrite whose arithmetic is wrong: the original step's result plus one."""
    a, op, b, c = re.search(r"\(correct\): (\d+) (\S) (\d+) = (-?\d+)", prompt).groups()  # type: ignore[union-attr]
    n = re.search(r"Rewrite step (\d+)", prompt).group(1)  # type: ignore[union-attr]
    return f"Step {n}: {a} {op} {b} = {int(c) + 1}"


def says(*answers: str) -> Callable[[str, int], str]:
    """A critic that gives answers[i] as its i-th judgement of every step."""
    return lambda prompt, i: answers[i % len(answers)]


async def play(
    generator: Callable[[str, int], str],
    critic: Callable[[str, int], str],
    *,
    policy: Callable[[str, int], str] = says("#### 0"),
    task: object = TASK,
    **cfg: object,
) -> EpisodeRecord:
    config = sneaky.SneakyConfig(**{"seed": 0, **cfg})  # type: ignore[arg-type]
    graph = sneaky.build_graph(
        ScriptedEngine(policy, "policy-v"),
        ScriptedEngine(critic, "critic-v"),
        VerifierCritic(TS),
        config,
        generator=ScriptedEngine(generator, "generator-v"),
    )
    out = await graph.compile().ainvoke(episode_input(task, "run-1"))  # type: ignore[arg-type]
    return EpisodeRecord.model_validate(out["episode"])


def by_role(ep: EpisodeRecord, role: str) -> list:
    return [s for s in ep.steps if s.role == role]


# ------------------------------------------------------------------------------------------------ validity
@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("Step 2: 75 + 83 = 159", "wrong"),  # its own arithmetic is wrong
        ("Step 2: 76 + 83 = 159", "wrong"),  # 76: neither in the problem nor an earlier result
        ("Step 2: 75 + 83 = 158", "same"),  # the original itself
        ("Step 2: 83 + 75 = 158", "same"),  # right arithmetic on known numbers, the original's value
        (
            "Step 2: 75 - 30 = 45",
            "undecided",
        ),  # right arithmetic on known numbers, another value: rollouts decide
        ("Step 2: then we add the rest", "undecided"),  # nothing to recompute
        ("", "unparsed"),
        ("#### 158", "unparsed"),
    ],
)
def test_a_rewrite_counts_only_if_its_own_arithmetic_makes_it_wrong(text: str, status: str) -> None:
    check = check_rewrite(TASK, SLOT, text)
    assert check["status"] == status, check
    assert check["reason"]


def test_slots_are_seeded_distinct_and_mix_in_correct_steps() -> None:
    cfg = sneaky.SneakyConfig(steps_per_task=2, correct_share=0.5, seed=3)
    slots, skipped = plan_slots(TASK, cfg)
    assert skipped is None and plan_slots(TASK, cfg)[0] == slots
    assert sorted(s["position"] for s in slots) == [0, 1]  # distinct while there are steps left
    assert all(s["original"] == TASK.reference_steps[s["position"]] for s in slots)
    tasks = TS.tasks(Split.TRAIN, 40)
    targets = [s["target"] for t in tasks for s in plan_slots(t, cfg)[0]]
    assert 20 < targets.count("correct") < 60  # about half of 80
    assert all(
        s["error_type"] is None for t in tasks for s in plan_slots(t, cfg)[0] if s["target"] == "correct"
    )
    assert plan_slots(TS.tasks(Split.HELDOUT, 1)[0], cfg)[0] == []


# --------------------------------------------------------------------------------------- zero-sum bookkeeping
async def test_zero_sum_rewards_on_sneaky_steps_and_the_critic_alone_on_correct_ones() -> None:
    ep = await play(off_by_one, says("Yes", "No"), steps_per_task=6, judgements=2, correct_share=0.5)
    rewrites, targets = by_role(ep, "generator"), by_role(ep, "target")
    assert rewrites and targets, "the seed mixes both kinds of slots"
    judged: dict[str, list[float]] = {}
    for s in by_role(ep, "critic"):
        judged.setdefault(s.parent_id, []).append(s.reward)
        assert s.reward == (1.0 if (s.text == "No") == (s.metadata["target"] == "sneaky") else -1.0)
    for g in rewrites:
        assert g.metadata["status"] == "wrong"
        critic = judged[g.id]
        assert g.reward + sum(critic) / len(critic) == 0  # zero-sum
    for t in targets:  # correct steps: accepted +1, rejected -1, no generator
        assert sorted(judged[t.id]) == [-1.0, 1.0]
    o = ep.outcome
    assert o["n"] == len(by_role(ep, "critic")) == 2 * (len(rewrites) + len(targets))
    assert o["correct"] == o["caught"] + o["accepted"] == o["n"] // 2
    assert o["generator_reward"] == 0 and o["sneaky_valid"] == len(rewrites) and o["sneaky_success"] == 0
    assert {c.critic_version for c in ep.critiques} == {"critic-v"} and len(ep.critiques) == o["n"]


async def test_a_sneaky_step_the_critic_accepts_wins_for_the_generator() -> None:
    ep = await play(off_by_one, says("Yes"), steps_per_task=4, judgements=1, correct_share=0.0)
    rewrites = by_role(ep, "generator")
    assert len(rewrites) == 4 and all(g.reward == 1.0 and g.metadata["success"] for g in rewrites)
    assert all(s.reward == -1.0 for s in by_role(ep, "critic"))
    assert ep.outcome["sneaky_success"] == 4 and ep.reward == -1.0
    # The generator's pg examples carry its reward as the advantage (one rewrite per slot: no baseline).
    pg = [e for e in ep.examples if e.role == Role.GENERATOR]
    assert len(pg) == 4 and all(e.kind == ExampleKind.GAME_TURN for e in pg)
    assert all(AdvantagePayload.model_validate(e.payload).advantage == 1.0 for e in pg)
    assert game_rates([ep])["success_rate"] == 1.0
    assert summarize([ep]) == "sneaky 4/4 (100%), really wrong 4; caught 0/4, accepted 0/0"


async def test_unparseable_or_unchanged_rewrites_lose_and_are_never_judged() -> None:
    def lazy(prompt: str, i: int) -> str:  # empty, only an answer, the original step
        return ["", "#### 12", prompt.split("(correct): ")[1].splitlines()[0]][i]

    ep = await play(
        lazy, says("Yes"), steps_per_task=1, rewrites=3, correct_share=0.0, generator_emit=["pg", "pair"]
    )
    rewrites = by_role(ep, "generator")
    assert [g.metadata["status"] for g in rewrites] == ["unparsed", "unparsed", "same"]
    assert all(g.reward == -1.0 for g in rewrites) and by_role(ep, "critic") == []
    assert ep.outcome["rewrites_unparsed"] == 2 and ep.outcome["sneaky_valid"] == 0 and ep.outcome["n"] == 0
    assert not any(e.role == Role.GENERATOR and e.kind == ExampleKind.PAIR for e in ep.examples)  # no winner


# --------------------------------------------------------------------------------------------------- rollouts
def operator_swap(prompt: str, i: int) -> str:
    """Right arithmetic on the problem's numbers, another result: only rollouts can tell."""
    return "Step 2: 75 - 30 = 45" if "Rewrite step 2" in prompt else "Step 1: 45 - 30 = 15"


def answer(value: int) -> Callable[[str, int], str]:
    return lambda prompt, i: f"\n#### {value}"


async def test_undecided_rewrites_are_decided_by_rollouts_against_the_original() -> None:
    task_answer = int(TASK.answer)

    # Continuations from the rewrite fail, from the original they succeed: really wrong.
    def continues(prompt: str, i: int) -> str:
        return (
            f"\n#### {task_answer}"
            if prompt.endswith(TASK.reference_steps[-1]) or "75 + 83" in prompt
            else "\n#### 1"
        )

    ep = await play(
        operator_swap, says("No"), policy=continues, steps_per_task=2, correct_share=0.0, rollouts=2
    )
    [g] = [g for g in by_role(ep, "generator") if g.metadata["position"] == 1]
    assert g.metadata["status"] == "wrong" and g.metadata["fail_share"] == 1.0
    assert g.metadata["control_fail_share"] == 0.0
    rolled = [s for s in ep.steps if s.role == "rollout" and s.parent_id == g.id]
    assert len(rolled) == 2 and all(s.token_ids and s.reward == 0.0 for s in rolled)
    assert [s for s in ep.steps if s.role == "control_rollout"]
    # The policy fails from the original step too: the failures say nothing, the rewrite does not count.
    ep = await play(
        operator_swap, says("No"), policy=answer(1), steps_per_task=2, correct_share=0.0, rollouts=2
    )
    assert {g.metadata["status"] for g in by_role(ep, "generator")} == {"not_wrong"}
    assert all(g.reward == -1.0 for g in by_role(ep, "generator")) and ep.outcome["n"] == 0
    # Without the control, failing continuations are enough; without rollouts, nothing is decided.
    ep = await play(
        operator_swap,
        says("No"),
        policy=answer(1),
        steps_per_task=2,
        correct_share=0.0,
        rollouts=2,
        control=False,
    )
    assert {g.metadata["status"] for g in by_role(ep, "generator")} == {"wrong"}
    ep = await play(operator_swap, says("No"), steps_per_task=2, correct_share=0.0, rollouts=0)
    assert {g.metadata["status"] for g in by_role(ep, "generator")} == {"unverified"}


# ---------------------------------------------------------------------------------------------------- critics
async def test_the_generative_critic_must_name_the_step_to_catch_it() -> None:
    def critique(prompt: str, i: int) -> str:
        n = len(re.findall(r"^Step \d+:", prompt.split("Solution:")[-1], re.MULTILINE))
        return [
            f"First wrong step: {n}\nVerdict: incorrect",
            "First wrong step: 1\nVerdict: incorrect" if n > 1 else "Verdict: correct",
            "no idea",
        ][i]

    ep = await play(
        off_by_one,
        critique,
        steps_per_task=4,
        correct_share=0.0,
        judgements=3,
        critic_kind="generative",
        shots=0,
    )
    for g in by_role(ep, "generator"):
        verdicts = [s.metadata["verdict"] for s in by_role(ep, "critic") if s.parent_id == g.id]
        assert verdicts[0] == "wrong" and verdicts[2] == "unparsed"
        assert verdicts[1] == ("other" if g.metadata["position"] > 0 else "right")
        assert g.reward == pytest.approx(1 / 3)  # caught once in three
    pairs = [e for e in ep.examples if e.kind == ExampleKind.PAIR]
    assert pairs and all(
        e.role == Role.CRITIC and "First wrong step" in e.payload["chosen"][0]["content"] for e in pairs
    )
    assert all("Check the solution step by step" in e.payload["prompt"][-1]["content"] for e in pairs)


async def test_pairs_and_pg_examples_for_the_critic_and_complete_pairs() -> None:
    ep = await play(off_by_one, says("Yes", "No"), steps_per_task=2, correct_share=0.0, judgements=2)
    pairs = [e for e in ep.examples if e.kind == ExampleKind.PAIR]
    assert len(pairs) == 2 and all(e.payload["chosen"][0]["content"] == "No" for e in pairs)
    assert all("Is step" in e.payload["prompt"][-1]["content"] for e in pairs)  # the step scorer's own prompt
    pg = [AdvantagePayload.model_validate(e.payload) for e in ep.examples if e.kind == ExampleKind.GAME_TURN]
    assert sorted(p.advantage for p in pg if p.metadata["role"] == "critic") == [-1.0, -1.0, 1.0, 1.0]
    assert all(p.temperature == 1.0 for p in pg)
    # Every judgement lost: with complete_pairs the answer that would have won is chosen.
    ep = await play(
        off_by_one,
        says("Yes"),
        steps_per_task=2,
        correct_share=0.0,
        judgements=1,
        complete_pairs=True,
        critic_emit=["pair"],
    )
    pairs = [e for e in ep.examples if e.kind == ExampleKind.PAIR and e.role == Role.CRITIC]
    assert [(e.payload["chosen"][0]["content"], e.payload["rejected"][0]["content"]) for e in pairs] == [
        ("No", "Yes")
    ] * 2
    assert not any(e.kind == ExampleKind.GAME_TURN and e.role == Role.CRITIC for e in ep.examples)


async def test_heldout_tasks_play_nothing() -> None:
    ep = await play(off_by_one, says("No"), task=TS.tasks(Split.HELDOUT, 1)[0])
    assert ep.steps == [] and ep.examples == [] and ep.outcome["skipped"].startswith("held-out")


def test_config_and_registration() -> None:
    spec = get_loop("sneaky")
    assert spec.needed_roles() == (Role.POLICY, Role.CRITIC, Role.GENERATOR) and spec.summarize is summarize
    with pytest.raises(ValidationError, match="complete_pairs"):
        sneaky.SneakyConfig(critic_kind="generative", complete_pairs=True)
    with pytest.raises(ValidationError):
        sneaky.SneakyConfig(error_types=["typo"])
    with pytest.raises(ValidationError):
        sneaky.SneakyConfig(rollout=3)


def test_the_shipped_recipe_trains_both_roles_on_each_others_games() -> None:
    from pathlib import Path

    from strop.training.recipe import load_recipe

    r = load_recipe(Path(__file__).resolve().parents[3] / "recipes" / "spc-arithmetic.toml")
    critic, generator = r.stages
    assert r.weights_of("generator") == "policy" and r.roles["critic"] != "critic"
    assert (critic.train.kind, critic.train.role, generator.train.kind, generator.train.role) == (  # type: ignore[union-attr]
        "dpo",
        "critic",
        "pg",
        "generator",
    )
    assert critic.eval.target == "critic"  # type: ignore[union-attr]
    assert set(critic.train.sources) == {"self", "generator"} and set(generator.train.sources) == {
        "self",
        "critic",
    }  # type: ignore[union-attr]
    for stage in r.stages:
        cfg = get_loop(stage.loop).parse_config(stage.config)
        assert cfg.critic_kind == "prm" and "pg" in cfg.generator_emit  # type: ignore[attr-defined]
        assert cfg.generator_temperature == generator.train.settings["temperature"]  # type: ignore[attr-defined,union-attr]
