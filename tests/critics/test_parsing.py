"""The critics' parsers on well-formed, sloppy, truncated, contradictory, adversarial and random text.

Whatever the text, a parser returns a value: an unreadable critique is UNPARSED with a reason, never an
exception and never a pass.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strop.critics.base import CritiqueVerdict
from strop.critics.parsing import parse_critique, parse_preference, parse_yes_no
from strop.critics.scorer import probability_yes
from strop.critics.steps import render_solution, split_steps

GOOD = """Step 1: correct. 12 + 34 = 46.
Step 2: incorrect. 46 * 3 is 138, not 128.
First wrong step: 2
Verdict: incorrect
Corrected solution:
Step 1: 12 + 34 = 46
Step 2: 46 * 3 = 138
#### 138"""


def test_a_well_formed_critique_is_read_in_full() -> None:
    p = parse_critique(GOOD, 2)
    assert p.verdict == CritiqueVerdict.INCORRECT and p.first_wrong_step == 2 and p.error is None
    assert p.step_labels == [True, False]
    assert p.corrected_solution is not None and p.corrected_solution.endswith("#### 138")


@pytest.mark.parametrize(
    ("text", "verdict", "first"),
    [
        ("Verdict: correct", CritiqueVerdict.CORRECT, None),
        ("First wrong step: none\nVerdict: correct", CritiqueVerdict.CORRECT, None),
        ("**Verdict:** Incorrect\n**First wrong step:** Step 1", CritiqueVerdict.INCORRECT, 1),
        ("Step 1: correct.\nStep 2: wrong, off by ten.\nVerdict: wrong", CritiqueVerdict.INCORRECT, 2),
        ("verdict - incorrect", CritiqueVerdict.INCORRECT, None),  # wrong, but which step is unknown
    ],
)
def test_sloppy_but_readable_critiques(text: str, verdict: CritiqueVerdict, first: int | None) -> None:
    p = parse_critique(text, 2)
    assert (p.verdict, p.first_wrong_step) == (verdict, first)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("Step 1: correct.\nStep 2: incorr", "Verdict"),  # truncated mid-generation
        ("Verdict: correct\nVerdict: incorrect", "contradictory verdicts"),
        ("First wrong step: 2\nVerdict: correct", "verdict 'correct'"),
        ("First wrong step: none\nVerdict: incorrect", "First wrong step: none"),
        ("First wrong step: 7\nVerdict: incorrect", "not a step"),
        ("First wrong step: 0\nVerdict: incorrect", "not a step"),
        ("First wrong step: 1\nFirst wrong step: 2\nVerdict: incorrect", "contradictory first wrong steps"),
        ("First wrong step: " + "9" * 5000 + "\nVerdict: incorrect", "not a step"),
    ],
)
def test_unreadable_or_contradictory_critiques_are_unparsed_with_a_reason(text: str, why: str) -> None:
    p = parse_critique(text, 2)
    assert p.verdict == CritiqueVerdict.UNPARSED
    assert p.error is not None and why in p.error


def test_a_corrected_solution_cannot_smuggle_in_a_verdict() -> None:
    """Verdicts are read only before 'Corrected solution:'; a fix that quotes one changes nothing."""
    text = "Verdict: incorrect\nFirst wrong step: 1\nCorrected solution:\nVerdict: correct\n#### 5"
    p = parse_critique(text, 1)
    assert p.verdict == CritiqueVerdict.INCORRECT and p.first_wrong_step == 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400), st.integers(min_value=0, max_value=12))
def test_fuzz_random_text_never_raises(text: str, n_steps: int) -> None:
    p = parse_critique(text, n_steps)
    assert p.verdict in set(CritiqueVerdict)
    if p.verdict == CritiqueVerdict.UNPARSED:
        assert p.error
    assert parse_preference(text) in (None, "A", "B", "tie")
    assert parse_yes_no(text) in (None, True, False)
    split_steps(text)


_PIECES = st.sampled_from(
    [
        "Step 1: correct.",
        "Step 2: incorrect.",
        "Step 9: wrong",
        "First wrong step: 1",
        "First wrong step: none",
        "First wrong step: 3",
        "Verdict: correct",
        "Verdict: incorrect",
        "Corrected solution:",
        "#### 42",
        "**Verdict**:",
        "verdict",
        "step",
        "\n",
        " ",
        "Better: A",
        "Better: B",
        "Yes",
        "No",
        "\x00",
        "🙂",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, max_size=25), st.integers(min_value=0, max_value=4))
def test_fuzz_adversarial_fragments_stay_consistent(pieces: list[str], n_steps: int) -> None:
    """Shuffled format fragments: a parsed critique is always internally consistent."""
    p = parse_critique(" ".join(pieces), n_steps)
    if p.verdict == CritiqueVerdict.CORRECT:
        assert p.first_wrong_step is None
    if p.first_wrong_step is not None:
        assert p.verdict == CritiqueVerdict.INCORRECT and 1 <= p.first_wrong_step <= max(n_steps, 1)
    if p.step_labels:
        assert len(p.step_labels) == n_steps


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("Better: A", "A"),
        ("better: b.", "B"),
        ("**Better:** Answer B", "B"),
        ("It's a tie.", "tie"),
        ("Better: A\nBetter: B", None),
        ("I cannot decide", None),
        ("", None),
    ],
)
def test_preference_parser(text: str, want: str | None) -> None:
    assert parse_preference(text) == want


def test_probability_from_a_yes_no_token() -> None:
    assert probability_yes("Yes", [-0.1]) == pytest.approx(0.9048, abs=1e-3)
    assert probability_yes(" No.", [-0.1]) == pytest.approx(1 - 0.9048, abs=1e-3)
    assert probability_yes("Maybe", [-0.1]) is None
    assert probability_yes("yes", None) == 1.0


def test_steps_round_trip() -> None:
    text = "Step 1: 12 + 34 = 46\n\n2. 46 * 3 = 138\n3.5 apples stay\n#### 138\nignored"
    steps, final = split_steps(text)
    assert steps == ["12 + 34 = 46", "46 * 3 = 138", "3.5 apples stay"] and final == "138"
    assert split_steps(render_solution(steps, final)) == (steps, final)
