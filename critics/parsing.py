"""Reading critics' free text back into verdicts. Model output is untrusted: nothing here raises.

Every parser returns a value with a reason when it could not read the text, and callers turn that into an
`UNPARSED` critique. A contradiction (a 'correct' verdict that names a wrong step, two different verdicts, a
step number the solution does not have) is unparsed too: guessing would let garbage pass as a judgement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from strop.critics.base import Critique, CritiqueVerdict

_CORRECTED = re.compile(r"^\s*\**\s*corrected\s+solution\s*\**\s*:?\s*\**", re.IGNORECASE | re.MULTILINE)
_VERDICT = re.compile(r"verdict\s*\**\s*[:=\-]\s*\**\s*(correct|incorrect|right|wrong)\b", re.IGNORECASE)
_FIRST_WRONG = re.compile(
    r"first\s+(?:wrong|incorrect|erroneous)\s+step\s*\**\s*[:=\-]?\s*\**\s*(?:step\s*)?(\d+|none|n/?a|-|no\b)",
    re.IGNORECASE,
)
_STEP_JUDGEMENT = re.compile(
    r"^\s*\**\s*step\s*(\d+)\s*\**\s*[:.)\-]\s*\**\s*(correct|incorrect|right|wrong)\b",
    re.IGNORECASE | re.MULTILINE,
)
_BETTER = re.compile(r"better\s*\**\s*[:=\-]?\s*\**\s*(?:answer\s*)?\(?\b([AB])\b|\b(tie)\b", re.IGNORECASE)
_YES_NO = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)
# The longest critique text a parser reads: runaway generations are cut here, not parsed for minutes.
MAX_PARSE_CHARS = 20_000


def _is_correct(word: str) -> bool:
    return word.lower() in ("correct", "right")


@dataclass
class ParsedCritique:
    """What a step-wise critique said, or why it could not be read (`error`)."""

    verdict: CritiqueVerdict
    first_wrong_step: int | None = None
    step_labels: list[bool] = field(default_factory=list)
    corrected_solution: str | None = None
    error: str | None = None

    def critique(self, text: str, critic_version: str) -> Critique:
        return Critique(
            verdict=self.verdict,
            reward=1.0 if self.verdict == CritiqueVerdict.CORRECT else 0.0,
            first_wrong_step=self.first_wrong_step,
            text=text,
            corrected_solution=self.corrected_solution,
            step_labels=self.step_labels or None,
            critic_version=critic_version,
            parse_error=self.error,
        )


def _unparsed(reason: str) -> ParsedCritique:
    return ParsedCritique(verdict=CritiqueVerdict.UNPARSED, error=reason)


def parse_critique(text: str, n_steps: int) -> ParsedCritique:
    """Read the step-wise format (see prompts/stepwise.txt): step judgements, first wrong step, verdict, fix.

    `n_steps` is how many steps the judged solution has; a first wrong step outside 1..n_steps is unparsed.
    A wrong verdict that names no step is read from the first 'Step N: incorrect' line, or left unknown.
    """
    if not isinstance(text, str) or not text.strip():
        return _unparsed("empty critique")
    text = text[:MAX_PARSE_CHARS]
    # Only the judgement part is searched for verdicts: a corrected solution may quote anything.
    fix = _CORRECTED.search(text)
    judgement = text[: fix.start()] if fix else text
    corrected = text[fix.end() :].strip() if fix else None

    verdicts = {_is_correct(m.group(1)) for m in _VERDICT.finditer(judgement)}
    named = [m.group(1).lower() for m in _FIRST_WRONG.finditer(judgement)]
    if len(verdicts) > 1:
        return _unparsed("contradictory verdicts")
    if not verdicts:
        # 'First wrong step: 2' (or 'none') is itself a verdict; without either line nothing was judged.
        if not named or len(set(named)) > 1:
            return _unparsed("no 'Verdict: correct|incorrect' line")
        verdicts = {not named[0].isdigit()}
    ok = verdicts.pop()

    labels: dict[int, bool] = {}
    for m in _STEP_JUDGEMENT.finditer(judgement):
        labels.setdefault(int(m.group(1)), _is_correct(m.group(2)))
    step_labels = (
        [labels[i] for i in range(1, n_steps + 1)] if all(i in labels for i in range(1, n_steps + 1)) else []
    )

    first: int | None = None
    if named:
        if len(set(named)) > 1:
            return _unparsed(f"contradictory first wrong steps: {', '.join(sorted(set(named)))}")
        if named[0].isdigit():
            first = int(named[0]) if len(named[0]) <= 6 else 0  # int() of 5,000 digits raises
            if not 1 <= first <= max(n_steps, 1):
                return _unparsed(f"first wrong step {named[0]} is not a step of this {n_steps}-step solution")
    elif not ok:
        first = next((i for i in sorted(labels) if not labels[i] and 1 <= i <= n_steps), None)

    if ok and first is not None:
        return _unparsed(f"verdict 'correct' but step {first} named as the first wrong one")
    if not ok and named and first is None:
        return _unparsed("verdict 'incorrect' but 'First wrong step: none'")
    return ParsedCritique(
        verdict=CritiqueVerdict.CORRECT if ok else CritiqueVerdict.INCORRECT,
        first_wrong_step=first,
        step_labels=step_labels,
        corrected_solution=corrected or None,
    )


def parse_preference(text: str) -> str | None:
    """'A', 'B' or 'tie' from a pairwise judge's reply; None when it says none of them, or several."""
    if not isinstance(text, str):
        return None
    found = {(m.group(1) or m.group(2)).upper() for m in _BETTER.finditer(text[:MAX_PARSE_CHARS])}
    if len(found) != 1:
        return None
    choice = found.pop()
    return "tie" if choice == "TIE" else choice


def parse_yes_no(text: str) -> bool | None:
    """True for a reply that opens with 'Yes', False for 'No', None otherwise."""
    if not isinstance(text, str):
        return None
    m = _YES_NO.match(text[:200])
    return None if m is None else m.group(1).lower() == "yes"
