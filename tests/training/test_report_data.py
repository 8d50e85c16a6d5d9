"""What `strop report` reads, on hand-built records (SQLite and PostgreSQL): which evolution a target names, its
versions in lineage order with their cycle, stage, role and status, examples per stage by kind, episode reward
curves and the loss curves kept on training jobs. No model runs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from strop.agents.loops.base import stable_id
from strop.memory.records import (
    EpisodeRecord,
    ExampleKind,
    ExampleRecord,
    ModelStatus,
    ModelVersionRecord,
    Role,
    RunRecord,
    TrainingJobRecord,
    utcnow,
)
from strop.training.evolve import candidate_id, collect_run_id
from strop.training.report_data import ReportError, collect, job_curves, resolve_scope, running_mean

EID = "e" * 32
PASS = "arithmetic/heldout/pass@1"


def _evolution(store: Any, eid: str = EID, recipe: str = "tiny-star", cycles: int = 2) -> dict[str, Any]:
    """A base and `cycles` cycles of one stage 'star': c1 promoted, c2 rejected, each with its collection run
    (episodes with rewards and SFT/PAIR examples) and its training job's log history."""
    t0 = utcnow() - timedelta(hours=1)
    base = store.register_model(
        ModelVersionRecord(
            name=f"base-{eid[:4]}", lineage="tiny", path="/m", status=ModelStatus.BASE, metrics={PASS: 0.25}
        )
    )
    parent = base
    made = []
    for k in range(1, cycles + 1):
        store.create_run(
            RunRecord(
                id=stable_id(eid, "stage", k, "star"),
                loop="evolve-stage",
                started_at=t0 + timedelta(minutes=k),
                config={
                    "recipe": recipe,
                    "evolve_id": eid,
                    "cycle": k,
                    "stage": "star",
                    "versions": {"policy": parent.id},
                },
            )
        )
        run = store.create_run(
            RunRecord(
                id=collect_run_id(eid, k, "star"),
                loop="best_of_n",
                started_at=t0 + timedelta(minutes=k, seconds=1),
                config={"evolve_id": eid, "cycle": k, "stage": "star"},
            )
        )
        for i in range(3):
            examples = [ExampleRecord(kind=ExampleKind.SFT, payload={"prompt": "p", "completion": "c"})] * (
                i + 1
            )
            examples = [x.model_copy(update={"id": f"{run.id}-{i}-{j}"}) for j, x in enumerate(examples)]
            if k == 2:
                examples.append(
                    ExampleRecord(
                        id=f"{run.id}-{i}-pair",
                        kind=ExampleKind.PAIR,
                        role=Role.CRITIC,
                        payload={"prompt": "p", "chosen": "a", "rejected": "b"},
                    )
                )
            store.write_episode(
                EpisodeRecord(
                    id=f"{run.id}-ep{i}",
                    run_id=run.id,
                    task_id=f"t{i}",
                    loop="best_of_n",
                    reward=float(i % 2),
                    examples=examples,
                    created_at=t0 + timedelta(minutes=k, seconds=2 + i),
                )
            )
        job = store.start_job(TrainingJobRecord(id=f"{eid[:4]}-job-{k}", algorithm="sft", model_in=parent.id))
        history = [{"loss": 2.0 / s, "step": float(s), "learning_rate": 1e-3} for s in (1, 2, 3)]
        history.append({"train_loss": 1.2, "step": 3.0})
        store.finish_job(job.id, metrics={"log_history": history})
        cand = store.register_model(
            ModelVersionRecord(
                id=candidate_id(eid, k, "star"),
                name=f"{recipe}-c{k}",
                lineage="tiny",
                path="/m",
                parent_id=parent.id,
                job_id=job.id,
                metrics={
                    PASS: 0.25 + 0.2 * (k == 1),
                    "train_loss": 1.2,
                    "examples": 6,
                    "decision": "promoted" if k == 1 else "no better",
                },
            )
        )
        store.set_model_status(cand.id, ModelStatus.PROMOTED if k == 1 else ModelStatus.REJECTED)
        made.append(cand)
        parent = cand if k == 1 else parent
    return {"base": base, "candidates": made}


def test_the_latest_evolution_by_default_or_by_recipe_name_or_any_of_its_runs(store: Any) -> None:
    _evolution(store, "a" * 32, recipe="older")
    _evolution(store)
    assert resolve_scope(store, None).evolve_id == EID
    assert resolve_scope(store, "older").evolve_id == "a" * 32
    assert resolve_scope(store, collect_run_id("a" * 32, 2, "star")).evolve_id == "a" * 32
    scope = resolve_scope(store, stable_id(EID, "stage", 1, "star"))
    assert scope.title == "tiny-star" and [r.config["cycle"] for r in scope.stage_runs] == [1, 2]
    with pytest.raises(ReportError, match="recipes evolved here: older, tiny-star"):
        resolve_scope(store, "nope")


def test_an_empty_store_names_what_to_run(store: Any) -> None:
    with pytest.raises(ReportError, match="strop evolve"):
        resolve_scope(store, None)


def test_versions_in_lineage_order_with_cycle_stage_role_and_status(store: Any) -> None:
    made = _evolution(store)
    data = collect(store, resolve_scope(store, None))
    assert [(v.label, v.cycle, v.stage, v.role, v.status) for v in data.versions] == [
        (made["base"].name, 0, "start", "policy", "base"),
        ("tiny-star-c1", 1, "star", "policy", "promoted"),
        ("tiny-star-c2", 2, "star", "policy", "rejected"),
    ]
    assert "2 cycles, stages star" in data.subtitle


def test_examples_per_stage_by_kind_with_the_role_where_several(store: Any) -> None:
    _evolution(store)
    data = collect(store, resolve_scope(store, None))
    assert data.counts == [
        ("c1 star", "sft (policy)", 6),
        ("c2 star", "pair (critic)", 3),
        ("c2 star", "sft (policy)", 6),
    ]
    assert store.example_counts([collect_run_id(EID, 2, "star"), "no-such-run"]) == {
        (collect_run_id(EID, 2, "star"), "pair", "critic"): 3,
        (collect_run_id(EID, 2, "star"), "sft", "policy"): 6,
    }


def test_reward_and_loss_curves(store: Any) -> None:
    _evolution(store)
    data = collect(store, resolve_scope(store, None))
    assert [c.label for c in data.episode_rewards] == ["c1 star", "c2 star"]
    assert data.episode_rewards[0].points == [(1.0, 0.0), (2.0, 0.5), (3.0, 1 / 3)]
    assert [c.label for c in data.losses] == ["tiny-star-c1 (sft)", "tiny-star-c2 (sft)"]
    assert data.losses[0].points == [
        (1.0, 2.0),
        (2.0, 1.0),
        (3.0, 2 / 3),
    ]  # the summary's train_loss is no step
    assert data.train_rewards == []
    short = TrainingJobRecord(
        algorithm="dpo", model_in="m", metrics={"log_history": [{"train_loss": 0.7, "step": 1.0}]}
    )
    assert job_curves([(data.versions[1], short)])[0][0].points == [
        (1.0, 0.7)
    ]  # no step logged: the run's mean
    assert running_mean([1.0, 0.0]) == [(1.0, 1.0), (2.0, 0.5)]


def test_a_plain_run_reports_its_own_data_and_models(store: Any) -> None:
    base = store.register_model(
        ModelVersionRecord(name="tiny", lineage="tiny", path="/m", status=ModelStatus.BASE)
    )
    run = store.create_run(RunRecord(loop="best_of_n", model_ids=[base.id]))
    store.write_episode(
        EpisodeRecord(
            run_id=run.id,
            task_id="t",
            loop="best_of_n",
            reward=1.0,
            examples=[ExampleRecord(kind=ExampleKind.SFT, payload={"p": 1})],
        )
    )
    scope = resolve_scope(store, run.id)
    assert scope.evolve_id is None and scope.title == f"best_of_n run {run.id}"
    data = collect(store, scope)
    assert [v.label for v in data.versions] == ["tiny"] and data.counts == [("best_of_n", "sft", 1)]
    assert data.episode_rewards[0].points == [(1.0, 1.0)] and data.losses == []
