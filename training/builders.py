"""Dataset builders: claim the examples a consumer has not used yet and hand TRL a `datasets.Dataset`.

Claiming goes through the store (row locks on PostgreSQL), so two jobs never train on the same example, and
a job that fails releases its claims for the next one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from strop.memory.records import ExampleKind, ExampleRecord, Role


def claim(
    store: Any,
    job_id: str,
    *,
    kinds: Sequence[ExampleKind],
    role: Role = Role.POLICY,
    consumer: str | None = None,
    limit: int | None = None,
    run_ids: Sequence[str] | None = None,
    holder: str | None = None,
) -> list[ExampleRecord]:
    """Claim unconsumed examples of `kinds` for `job_id` (at most `limit` in all, oldest first).

    `run_ids` keeps the claim to what those runs emitted (a stage's own collections); None takes any run's.
    `holder`, the job's lease holder, makes the store refuse the claim once a rerun has taken the job over.
    """
    got: list[ExampleRecord] = []
    for kind in kinds:
        left = None if limit is None else limit - len(got)
        if left is not None and left <= 0:
            break
        got += store.claim_examples(
            job_id, role=role, kind=kind, consumer=consumer, limit=left, run_ids=run_ids, holder=holder
        )
    return got


def claim_sft(
    store: Any,
    job_id: str,
    *,
    role: Role = Role.POLICY,
    consumer: str | None = None,
    limit: int | None = None,
    run_ids: Sequence[str] | None = None,
) -> tuple[list[ExampleRecord], Any]:
    """Claim unconsumed SFT examples for `job_id`; returns them and the TRL prompt/completion dataset."""
    from strop.memory import to_dataset

    examples = claim(
        store, job_id, kinds=[ExampleKind.SFT], role=role, consumer=consumer, limit=limit, run_ids=run_ids
    )
    if not examples:
        return [], None
    return examples, to_dataset(examples, ExampleKind.SFT)
