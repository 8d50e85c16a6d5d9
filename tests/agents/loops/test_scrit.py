"""The SCRIT loop's control flow on scripted engines: what self-validation keeps and what it drops, and that
the critic's training prompt carries no reference. The real path (tiny model, both databases, kill and rerun)
is in tests/training/test_scrit_evolve.py."""

from __future__ import annotations

from strop.agents.loops import scrit
from strop.agents.loops.base import episode_input
from strop.critics import VerifierCritic
from strop.memory.records import EpisodeRecord, ExampleKind, Role
from strop.sandbox.tasks import ArithmeticTaskSet, Split
from tests.agents.loops.fakes import ScriptedEngine

TS = ArithmeticTaskSet(steps=2)
TASK = TS.tasks(Split.TRAIN, 1)[0]
A, B = TASK.reference_steps  # e.g. '12 + 34 = 46', '46 + 57 = 103'
RIGHT = f"Step 1: {A}\nStep 2: {B}\n#### {TASK.answer}"
x, _, y, _, z = B.split()
WRONG_SUM = int(z) + 1
WRONG = f"Step 1: {A}\nStep 2: {x} + {y} = {WRONG_SUM}\n#### {WRONG_SUM}"  # step 2 miscalculated


def student(prompt: str, i: int) -> str:
    return RIGHT if i % 2 == 0 else WRONG


def fix(first: int | str) -> str:
    return (
        f"Step 1: correct.\nStep 2: incorrect.\nFirst wrong step: {first}\nVerdict: incorrect\n"
        f"Corrected solution:\nStep 1: {A}\nStep 2: {B}\n#### {TASK.answer}\nand then some rambling"
    )


def critic_says(prompt: str, i: int) -> str:
    """Critiques by the solution shown: 4 critiques per solution, in the order listed."""
    if f"#### {WRONG_SUM}" in prompt.split("Student's solution:")[1]:
        return [fix(2), fix(1), "Verdict: correct", "no idea"][i]  # only the first is fully right
    return [
        "Verdict: correct",
        "First wrong step: 1\nVerdict: incorrect\nCorrected solution:\n#### 0",
        "Verdict: correct",
        "garbage",
    ][i]


async def _episode(cfg: scrit.ScritConfig, split: Split = Split.TRAIN) -> EpisodeRecord:
    task = TS.tasks(split, 1)[0] if split != Split.TRAIN else TASK
    graph = scrit.build_graph(
        ScriptedEngine(student, "policy-v"), ScriptedEngine(critic_says, "critic-v"), VerifierCritic(TS), cfg
    ).compile()
    out = await graph.ainvoke(episode_input(task, "run-1"))
    return EpisodeRecord.model_validate(out["episode"])


async def test_self_validation_keeps_only_critiques_the_verifier_confirms() -> None:
    ep = await _episode(scrit.ScritConfig(n_solutions=2, critiques_per_solution=4, seed=0))
    assert ep.outcome["solutions"] == 2 and ep.outcome["solutions_correct"] == 1
    assert ep.steps[1].metadata["first_wrong_step"] == 2  # the wrong student's steps can be checked
    validated = [(c.text.splitlines()[0], c.validated) for c in ep.critiques]
    assert sum(c.validated for c in ep.critiques) == 3  # right-step fix, and two 'correct' for the right one
    assert ep.outcome == {**ep.outcome, "n": 8, "correct": 3, "parsed": 6}
    assert all(c.critic_version == "critic-v" for c in ep.critiques), validated
    examples = ep.examples
    assert {e.role for e in examples} == {Role.CRITIC} and {e.kind for e in examples} == {ExampleKind.SFT}
    # Balanced: one critique of the wrong solution, so at most one of the right one; identical ones deduped.
    assert len(examples) == 2
    for e in examples:
        assert all("Reference" not in m["content"] for m in e.payload["prompt"])  # the reference removed
        assert e.payload["prompt"][-1]["content"].endswith(
            f"#### {TASK.answer if e.payload['metadata']['student_correct'] else WRONG_SUM}"
        )
        assert (
            e.payload["completion"][0]["content"].endswith(f"#### {TASK.answer}")
            or e.payload["completion"][0]["content"] == "Verdict: correct"
        )
    assert not any("rambling" in e.payload["completion"][0]["content"] for e in examples)


async def test_without_validation_every_parsed_critique_is_kept() -> None:
    ep = await _episode(
        scrit.ScritConfig(
            n_solutions=2,
            critiques_per_solution=4,
            validate=False,
            balance=False,
            max_examples_per_task=16,
            seed=0,
        )
    )
    assert ep.outcome["correct"] == 6  # every parsed critique, right or wrong
    assert len(ep.examples) == 5  # the two identical 'Verdict: correct' critiques count once


async def test_check_first_step_drops_a_fix_that_names_the_wrong_step() -> None:
    loose = await _episode(
        scrit.ScritConfig(n_solutions=2, critiques_per_solution=4, check_first_step=False, seed=0)
    )
    strict = await _episode(scrit.ScritConfig(n_solutions=2, critiques_per_solution=4, seed=0))
    assert loose.outcome["correct"] == strict.outcome["correct"] + 1


async def test_corrections_for_the_policy_and_nothing_from_heldout_tasks() -> None:
    ep = await _episode(
        scrit.ScritConfig(n_solutions=2, critiques_per_solution=4, emit_corrections=True, seed=0)
    )
    policy = [e for e in ep.examples if e.role == Role.POLICY]
    assert len(policy) == 1 and policy[0].payload["completion"][0]["content"].endswith(f"#### {TASK.answer}")
    held = await _episode(
        scrit.ScritConfig(n_solutions=2, critiques_per_solution=4, emit_corrections=True), Split.HELDOUT
    )
    assert held.examples == [] and held.critiques


def test_the_loop_is_registered_with_both_roles() -> None:
    from strop.agents.loops.registry import get_loop

    spec = get_loop("scrit")
    assert {str(r) for r in spec.roles} == {"policy", "critic"} and spec.role_of(
        ExampleKind.SFT
    ) == Role.CRITIC
    assert spec.parse_config({"validate": False}).validate_critiques is False


async def test_each_round_records_critiques_sampled_parsed_validated_and_kept() -> None:
    validated = await _episode(scrit.ScritConfig(n_solutions=2, critiques_per_solution=4, seed=0))
    open_ = await _episode(scrit.ScritConfig(n_solutions=2, critiques_per_solution=4, validate=False, seed=0))
    assert (
        validated.outcome["validated"] == open_.outcome["validated"] == 3
    )  # validation is measured either way
    assert (validated.outcome["validate"], open_.outcome["validate"]) == (True, False)
    spec_summary = scrit.SPEC.summarize
    assert spec_summary is scrit.summarize
    assert scrit.summarize([validated, validated]) == (
        "critiques 16: parsed 12, validated 6, kept 6/16 (38%) by validation; examples 4"
    )
    assert scrit.summarize([open_]) == (
        "critiques 8: parsed 6, validated 3, kept 6/8 (75%) by parsing (validation off); "
        f"examples {open_.outcome['examples']}"
    )
    assert "validation on and off" in scrit.summarize([validated, open_])
    assert scrit.summarize([]).startswith("critiques 0: ")
