"""From the store to training data: `datasets.Dataset` in TRL's formats, JSONL/Parquet files, and counts.

Payloads are stored already in TRL's format for their kind (loops write them that way), so exporting is a
check and a conversion, never a reformatting that could drift from what a trainer expects.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from strop.memory.errors import StoreError
from strop.memory.records import ExampleKind, ExampleRecord, Role
from strop.memory.schema import Consumption, Critique, Episode, Example, Run, Step

if TYPE_CHECKING:
    import datasets

    from strop.memory.store import Store

# CLI names (plural, as users say them) and the record names both work.
KIND_NAMES: dict[str, ExampleKind] = {
    "sft": ExampleKind.SFT,
    "pairs": ExampleKind.PAIR,
    "dpo": ExampleKind.PAIR,  # what the pairs train
    "rewards": ExampleKind.REWARD,
    "values": ExampleKind.STEP_VALUE,
    "turns": ExampleKind.GAME_TURN,
    "advantages": ExampleKind.ADVANTAGE,
    **{k.value: k for k in ExampleKind},
}

# The columns TRL's trainers read for each kind: any one of the alternatives must be present.
REQUIRED: dict[ExampleKind, list[set[str]]] = {
    ExampleKind.SFT: [{"prompt", "completion"}, {"messages"}, {"text"}],
    ExampleKind.PAIR: [{"prompt", "chosen", "rejected"}, {"chosen", "rejected"}],
    ExampleKind.REWARD: [{"prompt", "completion"}, {"chosen", "rejected"}],
    ExampleKind.STEP_VALUE: [{"prompt", "completions", "labels"}, {"prompt", "completion"}],
    ExampleKind.GAME_TURN: [
        {"prompt_ids", "completion_ids", "logprobs", "advantage"},
        {"prompt", "completion"},
    ],
    # Token-level actions for the `pg` trainer (records.AdvantagePayload); no TRL dataset format to match.
    ExampleKind.ADVANTAGE: [{"prompt_ids", "completion_ids", "logprobs", "advantage"}],
}


CANONICAL = (
    "prompt",
    "completion",
    "completions",
    "chosen",
    "rejected",
    "messages",
    "text",
    "labels",
    "reward",
    "prompt_ids",
    "completion_ids",
    "logprobs",
    "advantage",
)


def parse_kind(kind: ExampleKind | str) -> ExampleKind:
    try:
        return KIND_NAMES[str(kind)]
    except KeyError:
        raise StoreError(
            f"unknown example kind {kind!r}; use one of: {', '.join(sorted(KIND_NAMES))}"
        ) from None


def check_payload(example: ExampleRecord, kind: ExampleKind) -> None:
    if example.kind != kind:
        raise StoreError(
            f"example {example.id} is of kind {example.kind}, not {kind}: export one kind at a time"
        )
    keys = set(example.payload)
    if not any(alt <= keys for alt in REQUIRED[kind]):
        wanted = " or ".join("/".join(c for c in CANONICAL if c in alt) for alt in REQUIRED[kind])
        raise StoreError(
            f"example {example.id} ({kind}) has payload keys {sorted(keys)}; TRL needs {wanted}. "
            "The loop that wrote it builds a malformed payload."
        )


def to_rows(examples: Sequence[ExampleRecord], kind: ExampleKind | str) -> list[dict[str, Any]]:
    kind = parse_kind(kind)
    for ex in examples:
        check_payload(ex, kind)
    names: set[str] = set()
    for ex in examples:
        names.update(ex.payload)
    # PostgreSQL's JSONB does not keep key order: give columns TRL's usual order, then the rest by name.
    columns = [c for c in CANONICAL if c in names] + sorted(names - set(CANONICAL))
    # Every row gets every column: datasets would otherwise take the columns of the first row only.
    return [{c: ex.payload.get(c) for c in columns} for ex in examples]


def to_dataset(examples: Sequence[ExampleRecord], kind: ExampleKind | str) -> datasets.Dataset:
    """A `datasets.Dataset` in TRL's format for `kind` (conversational prompt/completion for SFT,
    prompt/chosen/rejected for preference pairs, ...), ready for the matching TRL trainer."""
    import datasets
    import pyarrow as pa

    rows = to_rows(examples, kind)
    try:
        return datasets.Dataset.from_list(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise StoreError(
            f"the {parse_kind(kind)} payloads do not share one shape ({exc}); a loop writes a field with "
            "different types (e.g. a string prompt in some examples and a message list in others)"
        ) from exc


def export_examples(
    store: Store, kind: ExampleKind | str, fmt: str, out: Path, role: Role | str | None = None
) -> int:
    """Write every example of a kind (and role) to `out` as JSONL or Parquet; returns how many."""
    kind = parse_kind(kind)
    examples = store.list_examples(role=role, kind=kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        with out.open("w", encoding="utf-8") as fh:
            for row in to_rows(examples, kind):
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif fmt == "parquet":
        import datasets

        datasets.disable_progress_bars()
        to_dataset(examples, kind).to_parquet(str(out))
    else:
        raise StoreError(f"unknown export format {fmt!r}; use jsonl or parquet")
    return len(examples)


def stats(store: Store) -> dict[str, list[dict[str, Any]]]:
    """Counts per run, per loop, per example kind and role, and per consumer: what `strop db stats` shows."""
    n_steps = select(Step.episode_id, func.count().label("n")).group_by(Step.episode_id).subquery()
    n_ex = select(Example.episode_id, func.count().label("n")).group_by(Example.episode_id).subquery()
    n_crit = select(Critique.episode_id, func.count().label("n")).group_by(Critique.episode_id).subquery()
    per_episode = (
        select(
            Episode.run_id,
            Episode.loop,
            Episode.reward,
            func.coalesce(n_steps.c.n, 0).label("steps"),
            func.coalesce(n_ex.c.n, 0).label("examples"),
            func.coalesce(n_crit.c.n, 0).label("critiques"),
        )
        .outerjoin(n_steps, n_steps.c.episode_id == Episode.id)
        .outerjoin(n_ex, n_ex.c.episode_id == Episode.id)
        .outerjoin(n_crit, n_crit.c.episode_id == Episode.id)
        .subquery()
    )

    def agg(*keys: Any) -> Any:
        return select(
            *keys,
            func.count().label("episodes"),
            func.sum(per_episode.c.steps).label("steps"),
            func.sum(per_episode.c.critiques).label("critiques"),
            func.sum(per_episode.c.examples).label("examples"),
            func.avg(per_episode.c.reward).label("mean_reward"),
        )

    runs_q = (
        agg(Run.id.label("run"), Run.loop, Run.status)
        .select_from(Run)
        .outerjoin(per_episode, per_episode.c.run_id == Run.id)
        .group_by(Run.id, Run.loop, Run.status, Run.started_at)
        .order_by(Run.started_at)
    )
    loops_q = agg(per_episode.c.loop).group_by(per_episode.c.loop).order_by(per_episode.c.loop)
    consumed = (
        select(Consumption.example_id, func.count().label("n"))
        .where(Consumption.state == "consumed")
        .group_by(Consumption.example_id)
        .subquery()
    )
    kinds_q = (
        select(
            Example.kind,
            Example.role,
            func.count().label("examples"),
            func.count(consumed.c.example_id).label("consumed_by_any"),
        )
        .outerjoin(consumed, consumed.c.example_id == Example.id)
        .group_by(Example.kind, Example.role)
        .order_by(Example.kind, Example.role)
    )
    consumers_q = (
        select(Consumption.consumer, Consumption.state, func.count().label("examples"))
        .group_by(Consumption.consumer, Consumption.state)
        .order_by(Consumption.consumer, Consumption.state)
    )
    with store.db.read() as conn:
        return {
            name: [dict(r._mapping) for r in conn.execute(q)]
            for name, q in (
                ("runs", runs_q),
                ("loops", loops_q),
                ("examples", kinds_q),
                ("consumers", consumers_q),
            )
        }
