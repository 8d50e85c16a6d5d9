"""One cycle of a recipe at a time, across processes and hosts: `strop evolve` and every scheduled firing
run a recipe's cycles only while holding its lease in the store.

Why: two cycles of one recipe at once would both collect, both train from the same parent and race to promote,
and the evolve cycle resumes from the store, so a second run is never needed to make progress, only a
later one. The lease (memory/leases.py) is named after the recipe, renewed by a heartbeat thread while the
cycle runs, released at the end, and lost on its own after its TTL when the holder is killed: the next run
takes it over and continues the cycle from the store. A rerun on the holder's own machine that finds the
holder's pid gone takes it over at once, so "kill it and run it again" needs no wait.

Which cycles: `--cycles N` (or the recipe's `cycles`) runs cycles 1..N, each resumed from the store, as
before. `--once` runs the next unfinished cycle and stops, for cron, systemd timers, Kubernetes CronJobs and
`strop schedule`: every firing moves the recipe one cycle on. With `--cycles N` as well, it stops moving once
cycle N is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterator
from typing import Any

# new_holder and holder_is_dead live in memory (the store releases training jobs of dead holders too); they
# are re-exported here, where the cycle lease's callers have always found them.
from strop.memory.leases import (
    LeaseHeldError,
    LeaseKeeper,
    LeaseLostError,
    holder_is_dead,
    new_holder,
)

__all__ = [
    "LEASE_TTL",
    "LeaseHeldError",
    "evolve_next_cycle",
    "holder_is_dead",
    "lease_name",
    "new_holder",
    "next_cycle",
    "recipe_lease",
    "run_cycles",
    "target_cycle",
]

LEASE_TTL = 60.0  # seconds; the heartbeat renews it every TTL / 3
log = logging.getLogger(__name__)


def lease_name(recipe_name: str) -> str:
    return f"evolve:{recipe_name}"


@contextlib.contextmanager
def recipe_lease(
    store: Any, recipe_name: str, *, ttl: float = LEASE_TTL, holder: str | None = None
) -> Iterator[LeaseKeeper]:
    """Hold the recipe's lease, heartbeat included, for the body; LeaseHeldError when another run has it.

    A holder that is a dead process of this machine is taken over at once; any other waits for its TTL."""
    name, holder = lease_name(recipe_name), holder or new_holder()
    lease = store.acquire_or_take_over(name, holder, ttl)
    keeper = LeaseKeeper(store, lease, ttl)
    try:
        yield keeper
    finally:
        try:
            keeper.release()
        except Exception as e:  # the store unreachable at the end: the lease expires on its own after its TTL
            log.warning("could not release %s (it expires in at most %g s): %s", keeper.name, ttl, e)


def next_cycle(evo: Any) -> int:
    """The first cycle with a stage not finished (done, or skipped for want of examples), read from the store."""
    from strop.training.evolve import StagePhase

    finished = (StagePhase.DONE, StagePhase.SKIPPED)
    k = 1
    while all(evo.phase(k, s) in finished for s in range(len(evo.recipe.stages))):
        k += 1
    return k


def target_cycle(evo: Any, *, cycles: int | None, once: bool) -> int | None:
    """The cycle to run up to: N for --cycles N (default the recipe's), or the next unfinished one for --once
    (None when --cycles caps it and cycle N is done)."""
    if not once:
        return cycles or evo.recipe.cycles
    k = next_cycle(evo)
    return None if cycles is not None and k > cycles else k


async def _guarded(work: Coroutine[Any, Any, Any], keeper: LeaseKeeper) -> Any:
    """Await `work`, cancelling it if the lease is taken over (this holder stalled past its TTL): another
    run is continuing the cycle, and two must never train one recipe at once."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    keeper.on_lost = lambda _message: loop.call_soon_threadsafe(task.cancel)
    try:
        if keeper.lost is not None:  # lost before the callback was in place
            task.cancel()
        return await work
    except asyncio.CancelledError:
        if keeper.lost is None:
            raise
        raise LeaseLostError(
            f"{keeper.lost}; this run stopped (the store is consistent, the new holder continues the cycle)"
        ) from None
    finally:
        keeper.on_lost = None


def run_cycles(evo: Any, target: int, keeper: LeaseKeeper) -> Any:
    """Evolution.run(target) under the lease; returns its table rows."""
    return asyncio.run(_guarded(evo.run(target), keeper))


def evolve_next_cycle(
    recipe: Any, store: Any, *, keeper: LeaseKeeper, cycles: int | None = None, progress: bool = False
) -> int | None:
    """What a scheduled firing does with the lease held: run the recipe's next unfinished cycle.

    Returns the cycle it ran, or None when `cycles` caps the schedule and that cycle is done."""
    from strop.training.evolve import Evolution

    evo = Evolution(recipe, store, progress=progress)
    k = target_cycle(evo, cycles=cycles, once=True)
    if k is not None:
        run_cycles(evo, k, keeper)
    return k
