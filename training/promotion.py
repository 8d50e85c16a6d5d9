"""The promotion gate and registry moves: promote, reject, roll back.

A candidate is promoted only when its held-out score beats its parent's by the configured margin on the same
metric and the same number of tasks; otherwise it is rejected and kept for inspection.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from strop.memory.records import ModelStatus, ModelVersionRecord


class PromotionSettings(BaseModel):
    """When a candidate replaces its parent."""

    model_config = ConfigDict(extra="forbid")

    margin: float = Field(
        0.02, ge=0.0, le=1.0, description="Absolute held-out accuracy gain required (0.02 = 2 points)."
    )
    metric: str = Field(
        "pass@1", description="Metric compared, measured on the held-out split: 'pass@1' or 'pass@K'."
    )
    promote_on_tie: bool = Field(
        False, description="With margin 0, also promote a candidate that only ties its parent."
    )


class Decision(BaseModel):
    promote: bool
    reason: str
    candidate_score: float | None = None
    parent_score: float | None = None


class PromotionError(RuntimeError):
    """A registry move that cannot be made; the message says why and what to run instead."""


def decide(
    candidate: ModelVersionRecord,
    parent: ModelVersionRecord,
    metric_prefix: str,
    settings: PromotionSettings | None = None,
) -> Decision:
    """Compare `{metric_prefix}/{metric}` (e.g. 'arithmetic/heldout/pass@1') on candidate and parent."""
    cfg = settings or PromotionSettings()
    key = f"{metric_prefix}/{cfg.metric}"
    missing = [m.name for m in (candidate, parent) if key not in m.metrics]
    if missing:
        raise PromotionError(f"no {key!r} metric on {', '.join(missing)}; run `strop eval` on it first")
    n_key = f"{metric_prefix}/n_tasks"
    if candidate.metrics.get(n_key) != parent.metrics.get(n_key):
        raise PromotionError(
            f"candidate and parent were evaluated on different numbers of tasks ({candidate.metrics.get(n_key)} vs "
            f"{parent.metrics.get(n_key)}); evaluate both with the same --n-tasks"
        )
    c, p = float(candidate.metrics[key]), float(parent.metrics[key])
    # Accuracies are ratios of counts: compare without float noise. A tie is no gain, so margin 0 promotes
    # only a strict improvement unless the recipe asks to promote ties.
    gain, eps = c - p, 1e-9
    if gain >= cfg.margin - eps and (gain > eps or cfg.promote_on_tie):
        beats = (
            f"beats parent {p:.3f} by >= {cfg.margin}"
            if gain > eps
            else f"ties parent {p:.3f} (promote_on_tie)"
        )
        return Decision(promote=True, reason=f"{key} {c:.3f} {beats}", candidate_score=c, parent_score=p)
    why = "only ties" if abs(gain) <= eps and cfg.margin <= eps else "does not beat"
    return Decision(
        promote=False,
        reason=f"{key} {c:.3f} {why} parent {p:.3f}"
        + (f" by {cfg.margin}" if why == "does not beat" else ""),
        candidate_score=c,
        parent_score=p,
    )


def promote(store: Any, model: str) -> ModelVersionRecord:
    version = _get(store, model)
    store.set_model_status(version.id, ModelStatus.PROMOTED)
    return _get(store, version.id)


def reject(store: Any, model: str) -> ModelVersionRecord:
    version = _get(store, model)
    store.set_model_status(version.id, ModelStatus.REJECTED)
    return _get(store, version.id)


def rollback(store: Any, lineage: str) -> tuple[ModelVersionRecord, ModelVersionRecord | None]:
    """Reject the current promoted version of a lineage; returns it and the version now current."""
    current = store.current_model(lineage)
    if current is None:
        raise PromotionError(f"no model in lineage {lineage!r}; see `strop models list`")
    if current.status != ModelStatus.PROMOTED:
        raise PromotionError(
            f"lineage {lineage!r} is at its base {current.name!r}: nothing promoted to roll back"
        )
    store.set_model_status(current.id, ModelStatus.REJECTED)
    return _get(store, current.id), store.current_model(lineage)


def _get(store: Any, model: str) -> ModelVersionRecord:
    version = store.get_model(model)
    if version is None:
        raise PromotionError(f"no model version {model!r} in the registry; see `strop models list`")
    return version
