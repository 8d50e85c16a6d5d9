"""A stage's phases within a cycle, and the moves between them that the evolve cycle may make."""

from __future__ import annotations

from enum import StrEnum


class StagePhase(StrEnum):
    COLLECT = "collect"
    TRAIN = "train"
    EVALUATE = "evaluate"
    DECIDE = "decide"
    DONE = "done"
    SKIPPED = "skipped"  # nothing to train on: no training, no promotion


# The moves a stage may make; anything else is a bug and stops the cycle.
STAGE_TRANSITIONS: dict[StagePhase, frozenset[StagePhase]] = {
    StagePhase.COLLECT: frozenset({StagePhase.TRAIN, StagePhase.DONE}),  # DONE: a stage that trains nothing
    StagePhase.TRAIN: frozenset({StagePhase.EVALUATE, StagePhase.SKIPPED}),
    StagePhase.EVALUATE: frozenset({StagePhase.DECIDE}),
    StagePhase.DECIDE: frozenset({StagePhase.DONE}),
    StagePhase.DONE: frozenset(),
    StagePhase.SKIPPED: frozenset(),
}
