"""The self-correction loop's control flow on scripted engines: turns, feedback kinds, SCoRe's reward bonus,
what each emit mode writes. The real path (tiny model, both databases, code jail, kill between turns) is in
test_self_correct_real.py."""

from __future__ import annotations

import pytest

from strop.agents.loops import self_correct as sc
from strop.agents.loops.base import episode_input
from strop.agents.loops.registry import get_loop
from strop.agents.loops.self_correct_record import group_advantages, shaped_rewards
from strop.critics import VerifierCritic
from strop.critics.base import Critique, CritiqueVerdict
from strop.memory.records import AdvantagePayload, EpisodeRecord, ExampleKind, Role
from strop.sandbox.tasks import ArithmeticTaskSet, Split
from strop.sandbox.tasks.base import Task
from tests.agents.loops.fakes import ScriptedEngine

TS = ArithmeticTaskSet()
TASK = TS.tasks(Split.TRAIN, 1)[0]
RIGHT, WRONG = f"#### {TASK.answer}", f"#### {int(TASK.answer) + 1}"


def scripted(first: list[str], then: list[str]) -> ScriptedEngine:
    """Turn-1 answers by sample index; revisions in the order they are asked for."""
    revisions = iter(then)

    def answer(prompt: str, i: int) -> str:
        return first[i] if prompt == TASK.prompt else next(revisions)

    return ScriptedEngine(answer, "policy-v")


async def _episode(
    engine: ScriptedEngine, cfg: sc.SelfCorrectConfig, task: Task = TASK, critic: object = None
) -> EpisodeRecord:
    graph = sc.build_graph(engine, VerifierCritic(TS), cfg, critic).compile()  # type: ignore[arg-type]
    out = await graph.ainvoke(episode_input(task, "run-1"))
    return EpisodeRecord.model_validate(out["episode"])


def test_scores_bonus_rewards_improvement_and_punishes_breaking() -> None:
    assert shaped_rewards([0.0, 1.0], stage=2, alpha=1.0) == [0.0, 2.0]  # wrong -> right: bonus
    assert shaped_rewards([1.0, 0.0], stage=2, alpha=1.0) == [1.0, -1.0]  # right -> wrong: penalty
    assert shaped_rewards([1.0, 1.0], stage=2, alpha=10.0) == [1.0, 1.0]  # kept right: no bonus
    assert shaped_rewards([0.0, 1.0, 1.0], stage=2, alpha=0.5) == [
        0.0,
        1.5,
        1.0,
    ]  # each turn vs the one before
    assert shaped_rewards([0.0, 1.0], stage=1, alpha=1.0) == [0.0, 1.0]  # stage I: the plain reward


def test_advantages_subtract_the_mean_of_the_conversations_that_reached_the_turn() -> None:
    adv = group_advantages([[0.0, 2.0], [1.0, -1.0], [1.0]])  # the third stopped after turn 1
    assert adv[0] == pytest.approx([-2 / 3, 1.5]) and adv[1] == pytest.approx([1 / 3, -1.5])
    assert adv[2] == pytest.approx([1 / 3])
    assert group_advantages([[0.0, 1.0]]) == [[0.0, 1.0]]  # a group of one keeps its reward (REINFORCE)


async def test_two_turns_record_per_turn_accuracy_and_both_kinds_of_change() -> None:
    # four conversations: wrong->right, right->wrong, right->right, wrong->wrong
    engine = scripted([WRONG, RIGHT, RIGHT, WRONG], [RIGHT, WRONG, RIGHT, WRONG])
    ep = await _episode(engine, sc.SelfCorrectConfig(n=4, emit="none", seed=0))
    o = ep.outcome
    assert (o["n"], o["first_correct"], o["last_correct"], o["i2c"], o["c2i"]) == (4, 2, 2, 1, 1)
    assert o["correct_by_turn"] == [2, 2] and o["turns_taken"] == 8 and ep.examples == []
    assert len(ep.steps) == 8 and [s.metadata["turn"] for s in ep.steps[:2]] == [1, 2]
    assert ep.steps[1].parent_id == ep.steps[0].id  # a revision hangs under the attempt it revises
    assert ep.steps[0].metadata["feedback_after"] == sc.INTRINSIC_INSTRUCTION
    assert engine.calls.count(sc.INTRINSIC_INSTRUCTION) == 4  # intrinsic feedback: the instruction alone


async def test_stage_two_emits_every_turn_with_the_improvement_bonus() -> None:
    engine = scripted([WRONG, RIGHT, RIGHT, WRONG], [RIGHT, WRONG, RIGHT, WRONG])
    ep = await _episode(engine, sc.SelfCorrectConfig(n=4, stage=2, alpha=1.0, temperature=0.7, seed=0))
    # shaped: [0,2] [1,-1] [1,1] [0,0]; turn means 0.5 and 0.5
    got = {
        (e.payload["metadata"]["conversation"], e.payload["metadata"]["turn"]): e.payload["advantage"]
        for e in ep.examples
    }
    assert got == {
        (0, 1): -0.5,
        (0, 2): 1.5,
        (1, 1): 0.5,
        (1, 2): -1.5,
        (2, 1): 0.5,
        (2, 2): 0.5,
        (3, 1): -0.5,
        (3, 2): -0.5,
    }
    for e in ep.examples:
        assert e.kind == ExampleKind.ADVANTAGE and e.role == Role.POLICY
        p = AdvantagePayload.model_validate(e.payload)  # what the pg trainer reads
        assert p.temperature == 0.7 and len(p.logprobs) == len(p.completion_ids)


async def test_stage_one_anchors_turn_one_and_trains_the_revisions() -> None:
    engine = scripted([WRONG, RIGHT, RIGHT, WRONG], [RIGHT, WRONG, RIGHT, WRONG])
    ep = await _episode(engine, sc.SelfCorrectConfig(n=4, stage=1, anchors_per_task=4, seed=0))
    anchors = [e for e in ep.examples if e.payload["metadata"]["anchor"]]
    assert len(anchors) == 4 and all(e.payload["advantage"] == 0.0 for e in anchors)
    one = await _episode(
        scripted([WRONG, RIGHT, RIGHT, WRONG], [RIGHT, WRONG, RIGHT, WRONG]),
        sc.SelfCorrectConfig(n=4, stage=1, seed=0),
    )
    assert [
        e.payload["metadata"]["conversation"] for e in one.examples if e.payload["metadata"]["anchor"]
    ] == [0]
    revisions = {
        e.payload["metadata"]["conversation"]: e.payload["advantage"]
        for e in ep.examples
        if not e.payload["metadata"]["anchor"]
    }
    assert revisions == {0: 0.5, 1: -0.5, 2: 0.5, 3: -0.5}  # r(y2) minus its mean, no bonus


async def test_sft_baseline_keeps_revisions_that_end_right_with_the_whole_conversation() -> None:
    engine = scripted([WRONG, RIGHT, RIGHT, WRONG], [RIGHT, WRONG, RIGHT, WRONG])
    ep = await _episode(engine, sc.SelfCorrectConfig(n=4, emit="sft", seed=0))
    assert [e.payload["metadata"]["was_correct"] for e in ep.examples] == [False, True]
    prompt = ep.examples[0].payload["prompt"]
    assert [m["role"] for m in prompt] == ["user", "assistant", "user"]
    assert prompt[1]["content"] == WRONG and prompt[2]["content"] == sc.INTRINSIC_INSTRUCTION
    assert ep.examples[0].payload["completion"] == [{"role": "assistant", "content": RIGHT}]
    only_fixes = await _episode(
        scripted([WRONG, RIGHT], [RIGHT, RIGHT]),
        sc.SelfCorrectConfig(n=2, emit="sft", sft_keep_correct=False, seed=0),
    )
    assert len(only_fixes.examples) == 1


async def test_held_out_tasks_never_emit() -> None:
    task = TS.tasks(Split.HELDOUT, 1)[0]
    right = f"#### {task.answer}"

    def answer(prompt: str, i: int) -> str:
        return right if prompt != task.prompt else "#### -1"

    ep = await _episode(ScriptedEngine(answer), sc.SelfCorrectConfig(n=2, seed=0), task)
    assert ep.outcome["i2c"] == 2 and ep.examples == []


async def test_oracle_feedback_says_right_or_wrong_without_the_answer() -> None:
    engine = scripted([WRONG, RIGHT], [RIGHT, RIGHT])
    ep = await _episode(engine, sc.SelfCorrectConfig(n=2, feedback="oracle", emit="none", seed=0))
    said = [s.metadata["feedback_after"] for s in ep.steps if s.metadata["turn"] == 1]
    assert said[0].startswith("Your final answer is wrong.") and said[1].startswith(
        "Your final answer is correct."
    )
    assert all(str(TASK.answer) not in s for s in said)


class _Critic:
    version = "critic-v"

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def critique(self, task: Task, solution: str, reference: str | None = None) -> Critique:
        self.seen.append(solution)
        return Critique(
            verdict=CritiqueVerdict.INCORRECT,
            first_wrong_step=1,
            text="Step 1 is off by one.",
            critic_version=self.version,
        )


async def test_critic_feedback_puts_the_critique_between_turns_and_stores_it() -> None:
    critic = _Critic()
    ep = await _episode(
        scripted([WRONG], [RIGHT]), sc.SelfCorrectConfig(n=1, feedback="critic", seed=0), critic=critic
    )
    assert critic.seen == [WRONG]
    assert "Step 1 is off by one." in ep.steps[0].metadata["feedback_after"]
    assert [c.critic_version for c in ep.critiques] == ["verifier", "critic-v", "verifier"]
    with pytest.raises(ValueError, match="needs a critic"):
        sc.build_graph(ScriptedEngine(), VerifierCritic(TS), sc.SelfCorrectConfig(feedback="critic"))


async def test_execution_feedback_refuses_a_task_that_is_not_code() -> None:
    with pytest.raises(ValueError, match="not a code task"):
        await _episode(scripted([WRONG], [RIGHT]), sc.SelfCorrectConfig(n=1, feedback="execution", seed=0))


async def test_stop_when_correct_ends_a_conversation_at_its_first_right_turn() -> None:
    engine = scripted([RIGHT, WRONG], [WRONG, RIGHT, RIGHT])
    ep = await _episode(
        engine, sc.SelfCorrectConfig(n=2, turns=3, stop_when_correct=True, emit="none", seed=0)
    )
    assert [len([s for s in ep.steps if s.metadata["conversation"] == i]) for i in (0, 1)] == [1, 3]
    assert ep.outcome["correct_by_turn"] == [1, 1, 2] and ep.outcome["c2i"] == 0


def test_the_loop_is_registered_and_asks_for_a_critic_only_for_critic_feedback() -> None:
    spec = get_loop("self-correct")
    assert spec.needed_roles(spec.parse_config({})) == (Role.POLICY,)
    assert spec.needed_roles(spec.parse_config({"feedback": "critic"})) == (Role.POLICY, Role.CRITIC)
    with pytest.raises(ValueError, match="feedback"):
        spec.parse_config({"feedback": "telepathy"})


async def test_without_token_context_the_whole_conversation_is_sent_as_text() -> None:
    seen: list[list[str]] = []

    class Recording(ScriptedEngine):
        async def generate(self, requests: list) -> list:  # type: ignore[override]
            for r in requests:
                assert r.context_token_ids is None
                seen.append([m.role for m in r.messages])
            return await super().generate(requests)

    engine = Recording(lambda prompt, i: RIGHT if prompt != TASK.prompt else WRONG)
    ep = await _episode(engine, sc.SelfCorrectConfig(n=1, token_context=False, emit="none", seed=0))
    assert seen == [["user"], ["user", "assistant", "user"]] and ep.outcome["i2c"] == 1
