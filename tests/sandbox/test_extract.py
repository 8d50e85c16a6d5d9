"""Answer extraction on messy model output: never raises, finds the answer a reader would."""

from __future__ import annotations

import pytest

from strop.sandbox.tasks.extract import extract_answer, extract_marked, numbers_equal


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Step 1: 98 + 69 = 167\n#### 167", "167"),
        ("First 12, then 30, so 42 in all.", "42"),  # several numbers: the last
        ("She has 1,250 apples.", "1250"),  # thousands separator
        ("It costs $18.00 in total", "18"),  # currency; trailing zeros dropped
        ("We get 3,4 and 5", "5"),  # a comma list is not a thousands separator
        ("#### 72 clips", "72"),  # units after the marker
        ("The result is \\boxed{1{,}000}", "1000"),  # LaTeX thousands
        ("so $x = \\boxed{\\frac{3}{4}}$", "3/4"),  # LaTeX fraction in a box
        ("#### 5\n\nwait, I meant #### 6", "6"),  # the last marker wins
        ("The answer is 7. I'm 90% sure.", "7"),  # 'answer is' beats the last number
        ("temperature drops to −5 degrees", "-5"),  # unicode minus
        ("answer: seven", "seven"),  # a word answer after a marker
        ("I don't know.", None),
        ("", None),
        ("####", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_numbers_equal_forms() -> None:
    assert numbers_equal("1,000", "1000.0")
    assert numbers_equal("3/4", "0.75")
    assert not numbers_equal("41", "42")
    assert numbers_equal("seven", " seven ")
    assert not numbers_equal("1/0", "1")


def test_extract_marked_keeps_text() -> None:
    assert extract_marked("blah\n#### Paris.") == "Paris"
    assert extract_marked("no marker") is None
