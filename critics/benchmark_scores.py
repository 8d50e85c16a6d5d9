"""A critic benchmark's scores: error identification (ProcessBench), step labels (PRM) and correction.

Two questions are asked of a critic (METHODS.md section 3). Error identification, as ProcessBench scores it:
does it find exactly the first wrong step of a wrong solution, and does it accept a right one (F1 of the two
accuracies, so a critic that rejects everything scores 0)? Correction, as RealCritic scores it: a critique is
as good as the solution it leads to. Every score is a pure function of labelled items and what the critic
returned for them, so stored critiques can be scored again later.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from strop.critics.base import Critique, CritiqueVerdict
from strop.critics.labelling import LabelledSolution
from strop.sandbox.tasks.extract import extract_answer, numbers_equal

__all__ = ["answer_matches", "correction_scores", "processbench_scores", "step_label_scores"]


def _pairs(
    items: Sequence[LabelledSolution], critiques: Sequence[Critique]
) -> list[tuple[LabelledSolution, Critique]]:
    if len(items) != len(critiques):
        raise ValueError(f"{len(items)} items but {len(critiques)} critiques; pass one critique per item")
    return list(zip(items, critiques, strict=True))


def _share(hits: int, total: int) -> float | None:
    return hits / total if total else None


def processbench_scores(items: Sequence[LabelledSolution], critiques: Sequence[Critique]) -> dict[str, Any]:
    """ProcessBench's error identification: exact first wrong step on wrong solutions, acceptance of right
    ones, and their harmonic mean (F1), so a critic that flags everything or nothing scores 0.

    An unparsed critique counts as wrong in both accuracies. Accepting means a CORRECT verdict with no error
    reported. A class with no items has accuracy None, and then F1 is None.
    """
    pairs = _pairs(items, critiques)
    wrong = [(i, c) for i, c in pairs if i.erroneous]
    right = [(i, c) for i, c in pairs if not i.erroneous]
    found = sum(
        c.verdict == CritiqueVerdict.INCORRECT and c.first_wrong_step == i.first_wrong_step for i, c in wrong
    )
    accepted = sum(c.verdict == CritiqueVerdict.CORRECT and c.first_wrong_step is None for _, c in right)
    acc_err, acc_ok = _share(found, len(wrong)), _share(accepted, len(right))
    f1: float | None = None
    if acc_err is not None and acc_ok is not None:
        f1 = 0.0 if acc_err == 0 or acc_ok == 0 else 2 * acc_err * acc_ok / (acc_err + acc_ok)
    return {
        "acc_erroneous": acc_err,
        "acc_correct": acc_ok,
        "f1": f1,
        "n_erroneous": len(wrong),
        "n_correct": len(right),
        "unparsed": sum(c.verdict == CritiqueVerdict.UNPARSED for c in critiques),
    }


def step_label_scores(
    items: Sequence[LabelledSolution],
    labels: Sequence[list[bool] | None],
    probs: Sequence[list[float] | None] | None = None,
) -> dict[str, Any]:
    """A PRM's step accuracy: its per-step right/wrong labels against the known ones.

    A step before the first wrong one is right, the first wrong step is wrong, and the steps after it carry
    no label (ProcessBench labels only the first error). Items whose labels are missing or of another length
    (an unparsed reply) count every labelled step as missed. step_acc: share of labelled steps judged
    right; step_acc_wrong: share of first wrong steps flagged, so a PRM that says Yes to everything does not
    score well on a set where most steps are right. With `probs` (each step's P(correct)), step_auc: the
    chance that a labelled right step scores above a first wrong step (ties count half), over all items.
    It ignores the threshold: search and reranking only rank, so a PRM can rank well while being badly
    calibrated (say No to everything, more or less firmly). None when either class is missing.
    """
    hits = total = wrong_hits = wrong_total = 0
    for item, got in zip(items, labels, strict=True):
        n = item.first_wrong_step or len(item.steps)
        truth = [True] * (n - 1) + [item.first_wrong_step is None]
        ok = got is not None and len(got) == len(item.steps)
        for i, t in enumerate(truth):
            hit = ok and got[i] == t  # type: ignore[index]
            hits += hit
            total += 1
            if not t:
                wrong_hits += hit
                wrong_total += 1
    out: dict[str, Any] = {
        "step_acc": _share(hits, total),
        "step_acc_wrong": _share(wrong_hits, wrong_total),
        "n_steps": total,
    }
    if probs is not None:
        right: list[float] = []
        wrong: list[float] = []
        for item, p in zip(items, probs, strict=True):
            if p is None or len(p) != len(item.steps):
                continue  # unparsed: no scores to rank
            n = item.first_wrong_step or len(item.steps)
            right += p[: n - 1] if item.first_wrong_step else p[:n]
            wrong += [p[n - 1]] if item.first_wrong_step else []
        pairs = len(right) * len(wrong)
        out["step_auc"] = (
            (sum((r > w) + 0.5 * (r == w) for r in right for w in wrong) / pairs) if pairs else None
        )
    return out


def answer_matches(item: LabelledSolution, text: str) -> bool:
    """A solution text's final answer equals the item's problem answer (numbers within 1e-6)."""
    got = extract_answer(text)
    return bool(item.task.answer) and got is not None and numbers_equal(got, item.task.answer)


def correction_scores(
    items: Sequence[LabelledSolution],
    critiques: Sequence[Critique],
    verify: Callable[[LabelledSolution, str], bool] = answer_matches,
) -> dict[str, Any]:
    """RealCritic's closed loop: a critique is as good as the solution it leaves.

    The final solution is the critique's correction when it offers one, else the original when the critique
    accepts it, else none (not right). An unparsed critique leaves none: it never passes. Only items with a
    known answer count. correction_acc: share right; fixed: share of wrong solutions that end right; kept:
    share of right solutions that stay right. None where a share has no items.
    """
    ends: list[tuple[LabelledSolution, bool]] = []
    for item, c in _pairs(items, critiques):
        if not item.task.answer:
            continue
        final: str | None = None
        if c.parsed:
            final = c.corrected_solution if c.corrected_solution else item.solution if c.correct else None
        ends.append((item, final is not None and verify(item, final)))
    wrong = [ok for item, ok in ends if item.erroneous]
    right = [ok for item, ok in ends if not item.erroneous]
    return {
        "correction_acc": _share(sum(ok for _, ok in ends), len(ends)),
        "fixed": _share(sum(wrong), len(wrong)),
        "kept": _share(sum(right), len(right)),
        "n": len(ends),
        "n_erroneous": len(wrong),
        "n_correct": len(right),
    }
