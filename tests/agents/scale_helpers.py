"""Shared set-up for the scale-out tests: a registered simulated model and a work spec for best-of-N."""

from __future__ import annotations

from typing import Any

from strop.agents.work_spec import EngineSpec, RoleModel, WorkSpec
from strop.memory.records import ModelStatus, ModelVersionRecord, RunRecord
from strop.sandbox.tasks import ArithmeticTaskSet, Split

SIM = "strop.agents.sim_engine:make_sim_engine"


def register_sim(
    store: Any, version: str = "sim-v1", lineage: str = "sim", status: str = "base"
) -> ModelVersionRecord:
    return store.register_model(
        ModelVersionRecord(
            id=version, name=version, lineage=lineage, path="/nonexistent", status=ModelStatus(status)
        )
    )


def sim_spec(version: str = "sim-v1", *, latency: float = 0.02, follow: bool = False, **kw: Any) -> WorkSpec:
    return WorkSpec(
        loop="best_of_n",
        config={"n": 2, "seed": 0},
        task_set="arithmetic",
        roles={"policy": RoleModel(version=version, lineage="sim", follow=follow)},
        engine=EngineSpec(factory=SIM, options={"latency": latency}),
        **kw,
    )


def tasks(n: int) -> list[Any]:
    return ArithmeticTaskSet().tasks(Split.TRAIN, n)


def run_record(run_id: str) -> RunRecord:
    return RunRecord(id=run_id, loop="best_of_n", model_ids=["sim-v1"])


def assert_each_once(store: Any, run_id: str, task_list: list[Any]) -> None:
    """Every task has exactly one episode and every queue item is done."""
    from strop.agents.loops.base import episode_id

    episodes = store.list_episodes(run_id, children=False)
    assert sorted(e.id for e in episodes) == sorted(episode_id(run_id, t.id) for t in task_list)
    counts = store.work_counts(run_id)
    assert (counts.done, counts.todo, counts.claimed, counts.failed) == (len(task_list), 0, 0, 0)
