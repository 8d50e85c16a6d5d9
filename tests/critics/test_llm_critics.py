"""The LLM critics: control flow on a scripted engine, then each critic on the real tiny model.

The tiny model was never taught to critique, so its replies mostly do not parse: the point of the real-path
tests is that every reply becomes a Critique with the critic's version and raw text, unparsed or not, and
that critiques batch in the engine like actors' answers do.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from strop.agents.engines import load_engine
from strop.critics import (
    ContrastiveCritic,
    CritiqueVerdict,
    PairwiseJudge,
    StepScorer,
    StepwiseCritic,
)
from strop.critics.llm import CriticSampling, critique_all
from strop.sandbox.tasks.arithmetic import ArithmeticTaskSet
from strop.sandbox.tasks.base import Split
from tests.agents.loops.fakes import ScriptedEngine

TASKS = ArithmeticTaskSet(steps=2, ops=("+", "*")).tasks(Split.HELDOUT, 8)
CRITIQUE = "Step 1: correct.\nStep 2: incorrect.\nFirst wrong step: 2\nVerdict: incorrect\nCorrected solution:\n#### 7"


def scripted(reply: str | list[str]) -> ScriptedEngine:
    replies = [reply] if isinstance(reply, str) else reply
    return ScriptedEngine(lambda prompt, i: replies[i % len(replies)], version="critic-v1")


async def test_stepwise_critic_reads_its_reply_and_shows_no_reference() -> None:
    engine = scripted(CRITIQUE)
    task = TASKS[0]
    c = await StepwiseCritic(engine).critique(
        task, "Step 1: 1 + 2 = 3\nStep 2: 3 * 2 = 7\n#### 7", task.reference_solution
    )
    assert c.verdict == CritiqueVerdict.INCORRECT and c.first_wrong_step == 2
    assert c.critic_version == "critic-v1" and c.text == CRITIQUE and c.corrected_solution == "#### 7"
    assert "Reference" not in engine.calls[0] and "Step 2: 3 * 2 = 7" in engine.calls[0]


async def test_contrastive_critic_shows_the_reference_and_refuses_without_one() -> None:
    engine = scripted(CRITIQUE)
    task = TASKS[0]
    critic = ContrastiveCritic(engine)
    await critic.critique(task, "Step 1: 1 + 2 = 3\nStep 2: 3 * 2 = 7")
    assert task.reference_steps[0] in engine.calls[0] and "Reference solution" in engine.calls[0]
    bare = task.model_copy(update={"reference_steps": []})
    with pytest.raises(ValueError, match="needs a reference solution"):
        await critic.critique(bare, "#### 1")


async def test_unparseable_reply_is_an_unparsed_critique_never_a_pass() -> None:
    c = await StepwiseCritic(scripted("I think it is fine")).critique(TASKS[0], "#### 3")
    assert c.verdict == CritiqueVerdict.UNPARSED and not c.correct and c.parse_error
    assert c.text == "I think it is fine"


async def test_sampling_several_critiques_of_one_solution() -> None:
    critic = StepwiseCritic(
        scripted([CRITIQUE, "Verdict: correct", "garbage"]), sampling=CriticSampling(temperature=0.8, seed=1)
    )
    out = await critic.sample(TASKS[0], "Step 1: a\nStep 2: b", n=3)
    assert [c.verdict for c in out] == [
        CritiqueVerdict.INCORRECT,
        CritiqueVerdict.CORRECT,
        CritiqueVerdict.UNPARSED,
    ]


async def test_pairwise_judge_counts_an_order_flip_as_a_tie_and_records_position_bias() -> None:
    always_first = scripted("Better: A")
    judge = PairwiseJudge(always_first)
    p = await judge.compare(TASKS[0], "#### 1", "#### 2")
    assert p.winner == "tie" and not p.consistent and p.parsed and p.choices == ("a", "b")
    assert judge.position_bias_rate == 1.0

    # A judge that prefers the answer '#### 2' wherever it stands.
    def by_content(prompt: str, i: int) -> str:
        a_part = prompt.split("Answer A:")[1].split("Answer B:")[0]
        return "Better: A" if "#### 2" in a_part else "Better: B"

    fair = PairwiseJudge(ScriptedEngine(by_content, version="j"))
    p = await fair.compare(TASKS[0], "#### 1", "#### 2")
    assert p.winner == "b" and p.consistent and fair.position_bias_rate == 0.0
    p = await PairwiseJudge(scripted("no idea")).compare(TASKS[0], "x", "y")
    assert p.winner == "tie" and not p.parsed


async def test_step_scorer_reads_probabilities_and_finds_the_first_low_step() -> None:
    def yes_then_no(prompt: str, i: int) -> str:
        return "No" if "Is step 2 correct" in prompt else "Yes"

    scorer = StepScorer(ScriptedEngine(yes_then_no, version="prm"))
    c = await scorer.critique(TASKS[0], "Step 1: 1 + 1 = 2\nStep 2: 2 * 3 = 7\nStep 3: done")
    # The scripted engine reports log-prob -0.5 for its token: P(yes) = e^-0.5 for Yes, 1 - e^-0.5 for No.
    assert c.verdict == CritiqueVerdict.INCORRECT and c.first_wrong_step == 2
    assert c.score == pytest.approx(1 - 0.6065, abs=1e-3) and c.step_labels == [True, False, True]
    assert (
        await StepScorer(scripted("Perhaps")).critique(TASKS[0], "Step 1: x")
    ).verdict == CritiqueVerdict.UNPARSED
    with pytest.raises(ValueError, match="threshold"):
        StepScorer(scripted("Yes"), threshold=1.5)


@pytest.mark.slow
async def test_every_critic_on_the_real_tiny_model(tiny_model_path: Path) -> None:
    """64 critiques at once batch in the engine; each is a Critique with the tiny model's version."""
    engine = load_engine("tiny", model_version="tiny-critic")
    try:
        sampling = CriticSampling(max_tokens=24)
        items = [
            (
                t,
                "\n".join(f"Step {i}: {s}" for i, s in enumerate(t.reference_steps, 1))
                + f"\n#### {t.answer}",
            )
            for t in TASKS
        ] * 8
        before = engine.stats.batches
        out = await critique_all(StepwiseCritic(engine, sampling=sampling, shots=0), items)
        assert len(out) == 64 and all(c.critic_version == "tiny-critic" and c.text for c in out)
        assert all(c.parsed == (c.parse_error is None) for c in out)
        batches = engine.stats.batches - before
        assert batches <= 16, f"64 concurrent critiques took {batches} batches: they did not batch"

        contrastive = await critique_all(
            ContrastiveCritic(engine, sampling=sampling, shots=0), items[:4], reference=True
        )
        assert all(c.critic_version == "tiny-critic" for c in contrastive)
        pref = await PairwiseJudge(engine).compare(TASKS[0], items[0][1], "#### 0")
        assert pref.critic_version == "tiny-critic" and len(pref.texts) == 2
        scores = await StepScorer(engine).score_steps(TASKS[0], items[0][1])
        assert len(scores) == 2 and all(s is None or 0.0 <= s <= 1.0 for s in scores)
    finally:
        await asyncio.wait_for(engine.close(), 30)


def test_worked_examples_come_first_as_earlier_turns() -> None:
    critic = StepwiseCritic(scripted(CRITIQUE))
    msgs = critic.messages(TASKS[0], "Step 1: 1 + 2 = 3\n#### 3")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert len(StepwiseCritic(scripted(CRITIQUE), shots=3).messages(TASKS[0], "#### 3")) == 7
    assert msgs[1]["content"].startswith("Step 1: correct.") and "Reference" not in str(msgs)
    assert len(StepwiseCritic(scripted(CRITIQUE), shots=0).messages(TASKS[0], "#### 3")) == 1
    shots = ContrastiveCritic(scripted(CRITIQUE)).messages(TASKS[0], "#### 3", TASKS[0].reference_solution)
    assert "Reference solution" in shots[0]["content"]
