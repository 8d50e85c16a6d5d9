"""Dataset builders: claim the examples a consumer has not used yet and hand TRL a `datasets.Dataset`.

Claiming goes through the store (row locks on PostgreSQL), so two jobs never train on the same example, and
a job that fails releases its claims for the next one.
"""

from __future__ import annotations

from typing import Any

from memory.records import ExampleKind, ExampleRecord, Role


def claim_sft(
    store: Any, job_id: str, *, role: Role = Role.POLICY, consumer: str | None = None, limit: int | None = None,
) -> tuple[list[ExampleRecord], Any]:
    """Claim unconsumed SFT examples for `job_id`; returns them and the TRL prompt/completion dataset."""
    from memory import to_dataset

    examples = store.claim_examples(job_id, role=role, kind=ExampleKind.SFT, consumer=consumer, limit=limit)
    if not examples:
        return [], None
    return examples, to_dataset(examples, ExampleKind.SFT)
