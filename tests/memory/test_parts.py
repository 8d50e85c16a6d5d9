"""The Store's shape: public parts that own their SQL, the flat names over them, one async-twin mechanism,
and records read from rows by pydantic."""

from __future__ import annotations

import asyncio
import inspect
import threading
from datetime import UTC

from strop.memory import Store
from strop.memory.core import threaded
from strop.memory.records import RunRecord
from strop.memory.store import FLAT_PARTS, NOT_FLAT
from tests.memory.factories import make_episode

# Every async twin the store had when they were written by hand: callers across the code base use them.
ASYNC_TWINS = [
    "acreate_run",
    "afinish_run",
    "aget_run",
    "alist_runs",
    "awrite_episode",
    "awrite_episodes",
    "ahas_episode",
    "aepisode_ids",
    "aget_episode",
    "alist_episodes",
    "alist_critiques",
    "aadd_examples",
    "alist_examples",
    "aregister_model",
    "aget_model",
    "alist_models",
    "acurrent_model",
    "aset_model_status",
    "aupdate_model_metrics",
    "astart_job",
    "aget_job",
    "alist_jobs",
    "aclaim_examples",
    "afinish_job",
    "afail_job",
    "arelease_stale_jobs",
    "aexample_counts",
    "acount_examples",
    "aupdate_baselines",
    "aget_baseline",
    "alist_baselines",
]


def test_every_part_method_is_on_the_store_once(store: Store) -> None:
    for part, cls in FLAT_PARTS.items():
        assert isinstance(getattr(store, part), cls)
        for name, value in vars(cls).items():
            if name.startswith("_") or name in NOT_FLAT:
                continue
            if isinstance(value, threaded):
                assert inspect.iscoroutinefunction(getattr(store, name)), name
            elif inspect.isfunction(value):
                assert getattr(store, name).__self__ is getattr(store, part), name
    assert store.write_episode.__self__ is store.episodes
    assert store.claim_examples.__self__ is store.examples
    for name in ASYNC_TWINS:
        assert inspect.iscoroutinefunction(getattr(store, name)), name
        assert hasattr(store, name[1:]), name


def test_a_twin_has_its_method_signature_and_runs_off_the_event_loop(store: Store) -> None:
    assert inspect.signature(store.alist_episodes) == inspect.signature(store.list_episodes)
    assert inspect.signature(store.aclaim_examples) == inspect.signature(store.claim_examples)

    class Probe:
        def where(self, tag: str) -> tuple[str, int]:
            return tag, threading.get_ident()

        awhere = threaded(where)

    async def main() -> tuple[tuple[str, int], int]:
        return await Probe().awhere("x"), threading.get_ident()

    (tag, worker), loop_thread = asyncio.run(main())
    assert tag == "x" and worker != loop_thread


def test_records_come_back_from_rows_in_utc(store: Store) -> None:
    run = store.create_run(RunRecord(loop="best_of_n", config={"n": 2}, model_ids=["m"]))
    got = store.get_run(run.id)
    assert got is not None and got.started_at.tzinfo is not None
    assert got.started_at.utcoffset() == UTC.utcoffset(None)
    assert got.model_dump(exclude={"started_at"}) == run.model_dump(exclude={"started_at"})


def test_task_ids_of_runs(store: Store) -> None:
    a = store.create_run(RunRecord(loop="best_of_n"))
    b = store.create_run(RunRecord(loop="best_of_n"))
    store.write_episodes(
        [
            make_episode(a.id, task_id="t1", seed=1),
            make_episode(a.id, task_id="t2", seed=2),
            make_episode(b.id, task_id="t3", seed=3),
        ]
    )
    assert store.episodes.task_ids([a.id]) == {"t1", "t2"}
    assert store.episodes.task_ids([a.id, b.id]) == {"t1", "t2", "t3"}
    assert store.episodes.task_ids([]) == set()
