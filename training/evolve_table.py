"""The evolve cycle's report: one row per stage and cycle, printed as a table and written to the run folder
(table.md, table.json, accuracy.png). Everything is read back from the store, so a resumed or finished
evolution reports the same table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field
from rich.console import Console
from rich.markup import escape

from strop.agents.evaluators.base import pct
from strop.agents.loops.registry import get_loop
from strop.memory.records import ModelStatus, ModelVersionRecord
from strop.training.evolve_phases import StagePhase
from strop.training.trainers import get_trainer

if TYPE_CHECKING:
    from strop.training.evolve import Evolution


class StageRow(BaseModel):
    """One line of the per-cycle table (cycle 0 is the starting model of each trained role)."""

    cycle: int
    stage: str
    role: str = ""
    model: str
    phase: StagePhase
    heldout_accuracy: float | None = None
    current_accuracy: float | None = None
    policy_accuracy: float | None = Field(
        None,
        description="The figure the stage's evaluator reports beside its gate (a critic stage's policy "
        "pass@1, a game stage's transfer accuracy).",
    )
    decision: str = ""
    examples: int = 0
    collection: str = Field(
        "", description="The loop's own summary of the stage's games (LoopSpec.summarize)."
    )
    train_loss: float | None = None
    minutes: float = 0.0


def console() -> Console:
    """Long lines unwrapped (greppable), and a log file gets 120 columns instead of 80, so the table fits."""
    out = Console(soft_wrap=True)
    return out if out.is_terminal else Console(soft_wrap=True, width=120)


def table(evo: Evolution, cycles: int) -> list[StageRow]:
    rows: list[StageRow] = []
    current: dict[int, float | None] = {}
    for s, stage in enumerate(evo.recipe.stages):
        if stage.train is None:
            continue
        base = evo._model(evo.bases[evo.weights(stage.train.role)].id)
        acc = base.metrics.get(evo.metric(s))
        current[s] = acc
        rows.append(
            StageRow(
                cycle=0,
                stage=stage.name,
                role=stage.train.role,
                model=base.name,
                phase=StagePhase.DONE,
                heldout_accuracy=acc,
                current_accuracy=acc,
                decision="start",
                policy_accuracy=_extra(evo, base, s),
                minutes=_eval_minutes(base),
            )
        )
    for k in range(1, cycles + 1):
        for s in range(len(evo.recipe.stages)):
            rows.append(_row(evo, k, s, current))
    return rows


def _extra(evo: Evolution, version: ModelVersionRecord, s: int) -> float | None:
    extra = evo.extra_metric(s)
    return None if extra is None else version.metrics.get(extra[1])


def _row(evo: Evolution, k: int, s: int, current: dict[int, float | None]) -> StageRow:
    stage = evo.recipe.stages[s]
    collect = evo.store.get_run(evo.collect_run_id(k, s))
    phase = evo.phase(k, s)
    examples, seconds = 0, 0.0
    collection = ""
    if collect is not None:
        episodes = evo.store.list_episodes(collect.id, children=False)
        examples = sum(int(e.outcome.get("examples", 0)) for e in episodes)
        if (summarize := get_loop(stage.loop).summarize) is not None and episodes:
            collection = summarize(episodes)
        online = stage.train is not None and get_trainer(stage.train.kind).online
        if collect.finished_at is not None and not online:  # on-line rollouts are in the training time
            seconds += (collect.finished_at - collect.started_at).total_seconds()
    if stage.train is None:
        return StageRow(
            cycle=k,
            stage=stage.name,
            model="-",
            phase=phase,
            decision="collect only",
            examples=examples,
            minutes=seconds / 60,
            collection=collection,
        )
    cand = evo.store.get_model(evo.candidate_id(k, s))
    row = StageRow(
        cycle=k,
        stage=stage.name,
        role=stage.train.role,
        model=cand.name if cand else "-",
        phase=phase,
        examples=examples,
        collection=collection,
    )
    if cand is not None:
        row.heldout_accuracy = cand.metrics.get(evo.metric(s))
        row.train_loss = cand.metrics.get("train_loss")
        row.examples = int(cand.metrics.get("examples", examples))
        seconds += float(cand.metrics.get("train_seconds", 0.0)) + 60 * _eval_minutes(cand)
        row.policy_accuracy = _extra(evo, cand, s)
        row.decision = str(cand.status)
        if cand.status == ModelStatus.PROMOTED:
            current[s] = row.heldout_accuracy
        elif (parent := evo.stage_parent(k, s)) is not None and evo.metric(s) in parent.metrics:
            # Rejected: the role stays at the version this stage started from, which an earlier stage of the
            # cycle may have promoted (two stages training one role), measured by this stage's gate.
            current[s] = parent.metrics[evo.metric(s)]
    elif phase == StagePhase.SKIPPED:
        row.decision = "skipped (nothing to train)"
    row.current_accuracy, row.minutes = current.get(s), seconds / 60
    return row


def write_report(evo: Evolution, rows: list[StageRow]) -> Path:
    """Print the table and write table.md, table.json and accuracy.png into the run folder."""
    from rich.table import Table

    out = evo.recipe.run_dir()
    out.mkdir(parents=True, exist_ok=True)
    multi = len(evo.recipe.stages) > 1
    evaluated = [s for s, st in enumerate(evo.recipe.stages) if st.eval is not None and st.train is not None]
    # the first figure an evaluator reports beside its gate names the extra column (policy acc, transfer acc)
    extra = next((e[0] for s in evaluated if (e := evo.extra_metric(s)) is not None), None)
    score = (
        "held-out score"
        if any(evo.evaluator(s).score_label == "score" for s in evaluated)
        else "held-out acc"
    )
    games = any(r.collection for r in rows)  # a loop that summarises its collection (the sneaky game)
    header = [
        "cycle",
        *(["stage", "role"] if multi else []),
        "model",
        score,
        f"current {score.split()[-1]}",
        *([extra] if extra else []),
        "decision",
        "examples",
        "train loss",
        "minutes",
        *(["collection"] if games else []),
    ]
    cells = [
        [
            str(r.cycle),
            *([r.stage, r.role] if multi else []),
            r.model,
            pct(r.heldout_accuracy),
            pct(r.current_accuracy),
            *([pct(r.policy_accuracy)] if extra else []),
            r.decision,
            str(r.examples),
            "-" if r.train_loss is None else f"{r.train_loss:.3f}",
            f"{r.minutes:.1f}",
            *([r.collection or "-"] if games else []),
        ]
        for r in rows
    ]
    gates = sorted({evo.evaluator(s).gate_text(evo.eval_context(s)) for s in evaluated})
    shown = Table(title=escape(f"{evo.recipe.name}: held-out {'; '.join(gates)}"))
    for h in header:
        shown.add_column(h)
    for c in cells:
        shown.add_row(*map(escape, c))
    evo.console.print(shown)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(c) + " |" for c in cells]
    (out / "table.md").write_text("\n".join(md) + "\n")
    (out / "table.json").write_text(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
    # The y axis names what the gates compare: a game stage's gate is a win rate, a critic stage's an F1.
    _plot(rows, out / "accuracy.png", title=evo.recipe.name, ylabel=f"held-out {'; '.join(gates)} (%)")
    evo.console.print(f"report: {out / 'table.md'}, {out / 'accuracy.png'}", markup=False)
    return out


def _eval_minutes(version: ModelVersionRecord) -> float:
    m = version.metrics
    return (float(m.get("eval_seconds", 0.0)) + float(m.get("critic_eval_seconds", 0.0))) / 60


def _plot(rows: list[StageRow], path: Path, *, title: str, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    stages = list(dict.fromkeys(r.stage for r in rows if r.role))
    for stage in stages:
        mine = [r for r in rows if r.stage == stage]
        suffix = f" ({stage})" if len(stages) > 1 else ""
        pts = [(r.cycle, 100 * r.heldout_accuracy) for r in mine if r.heldout_accuracy is not None]
        cur = [(r.cycle, 100 * r.current_accuracy) for r in mine if r.current_accuracy is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o", label=f"candidate{suffix}")
        if cur:
            ax.plot(*zip(*cur, strict=True), "-", label=f"current (promoted){suffix}")
    ax.set_xlabel("cycle")
    ax.set_ylabel(ylabel, fontsize=9 if len(ylabel) > 40 else None)
    ax.set_xticks(sorted({r.cycle for r in rows}))
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if stages:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
