"""Running one episode of a loop: the one function the runner, the rollout workers and GRPO's rollouts share.

A loop's graph takes `{task, run_id, episode_id}` and ends with `episode` (an `EpisodeRecord` as JSON) in its
state (agents/loops/base.py). With a checkpointer, the episode's thread is its id, so a process killed
mid-episode resumes after the last node that finished, and a finished episode not yet written is read back
instead of being run again.

Some failures belong to one item, not to the run: an engine refusing a prompt too long for its context, a
request the engine or a loop node finds invalid for this task's data. `item_failure` tells them apart from
bugs and infrastructure faults, and `failed_episode` records one as a FAILED episode with its reason, so the
runner goes on with the other items (agents/runner.py says what is retried).
"""

from __future__ import annotations

from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import StateGraph

from strop.agents.engines.base import EngineError, PromptTooLongError
from strop.agents.loops.base import episode_id as default_episode_id
from strop.agents.loops.base import episode_input
from strop.memory.errors import StoreError
from strop.memory.records import EpisodeRecord, EpisodeStatus
from strop.sandbox.tasks.base import Task
from strop.sandbox.tasks.guard import HeldoutTaskError


class EpisodeContractError(RuntimeError):
    """A loop graph that ended without an `episode` in its state."""


class EpisodeFailure(RuntimeError):
    """Raised by a loop node for a task it cannot do (bad data, nothing to play): the runner records the
    episode as failed with `kind` and this message and goes on with the other tasks."""

    def __init__(self, message: str, kind: str = "failed") -> None:
        super().__init__(message)
        self.kind = kind


# How each kind of failure reads in a summary line ("skipped: 3, too long for the context").
FAILURE_TEXT: dict[str, str] = {
    "too_long": "too long for the context",
    "refused": "refused by the engine",
    "invalid": "invalid for this item",
    "failed": "failed",
}
# HTTP statuses with which a server refuses one request for what it says, not for its own state.
_REFUSAL_STATUSES = frozenset({400, 413, 422})
# Kept in the store: enough to say what was wrong, never a whole prompt.
_MAX_REASON = 500


def failure_text(kind: str) -> str:
    """The words a summary uses for a failure kind (the kind itself for one a loop named)."""
    return FAILURE_TEXT.get(kind, kind.replace("_", " "))


def item_failure(exc: BaseException) -> tuple[str, str] | None:
    """(kind, reason) when `exc` is a fault of one item, None when it must stop the run.

    Of the item: a prompt too long for the model's context (`too_long`); a request a server refused with
    400/413/422 (`refused`); a `ValueError` a loop node raised on the task's data, such as invalid sampling
    parameters or a malformed labelled item (`invalid`); an `EpisodeFailure` (its own kind). These give the
    same answer every time they are tried, and the other items do not share them.

    Not of the item, so they stop the run: interrupts and cancellation (not `Exception`s), bugs in strop or
    a loop (`EpisodeContractError`, TypeError, KeyError, AttributeError, RuntimeError...), the store's and the
    held-out guard's errors (a ValueError there is a broken contract, not bad data), and every other engine
    error: a server that does not answer, an engine that is closed or out of memory is down for every item.
    """
    if isinstance(exc, BaseExceptionGroup):  # a node that fanned out: the item's only if every leaf is
        leaves = [item_failure(e) for e in exc.exceptions]
        return leaves[0] if leaves and all(leaves) else None
    if not isinstance(exc, Exception) or isinstance(
        exc, EpisodeContractError | StoreError | HeldoutTaskError
    ):
        return None
    if isinstance(exc, EpisodeFailure):
        kind = exc.kind
    elif isinstance(exc, PromptTooLongError):
        kind = "too_long"
    elif isinstance(exc, EngineError):
        if getattr(exc.__cause__, "status_code", None) not in _REFUSAL_STATUSES:
            return None
        kind = "refused"
    elif isinstance(exc, ValueError):
        kind = "invalid"
    else:
        return None
    reason = " ".join(str(exc).split()) or type(exc).__name__
    if len(reason) > _MAX_REASON:
        reason = reason[: _MAX_REASON - 3] + "..."
    return kind, reason


def failed_episode(
    task: Task,
    run_id: str,
    loop: str,
    kind: str,
    reason: str,
    *,
    error_type: str = "",
    episode_id: str | None = None,
) -> EpisodeRecord:
    """The FAILED episode that stands for an item that could not be run: no steps, the reason in `outcome`
    (`error`, `error_kind`, `error_type`), and n/correct/pass zero so no total counts it as scored."""
    return EpisodeRecord(
        id=episode_id or default_episode_id(run_id, task.id),
        run_id=run_id,
        task_id=task.id,
        loop=loop,
        status=EpisodeStatus.FAILED,
        outcome={
            "error": reason,
            "error_kind": kind,
            "error_type": error_type,
            "n": 0,
            "correct": 0,
            "pass": False,
            "examples": 0,
            "tokens": 0,
        },
    )


async def run_episode(
    graph: Any,
    task: Task,
    run_id: str,
    *,
    checkpointer: BaseCheckpointSaver | None = None,
    episode_id: str | None = None,
) -> EpisodeRecord:
    """Run (or resume) the episode of `task` under `run_id` and return what the loop recorded; not stored.

    `graph`: a compiled graph, or a `StateGraph` (compiled here, with `checkpointer`). `checkpointer`: resume
    from the episode's last checkpoint; the graph must have been compiled with the same saver. `episode_id`:
    default `episode_id(run_id, task.id)`, the id that makes reruns address the same episode; GRPO passes its
    own, since one task is sampled in many steps of one run.
    """
    if isinstance(graph, StateGraph):
        graph = graph.compile(checkpointer=checkpointer)
    state = episode_input(task, run_id)
    if episode_id is not None:
        state["episode_id"] = episode_id
    if checkpointer is None:
        out = await graph.ainvoke(state)
    else:
        config = {"configurable": {"thread_id": state["episode_id"]}}
        snapshot = await graph.aget_state(config)
        # durability="sync": each node's checkpoint is committed before the next node starts, so a process
        # killed mid-episode (between two turns, say) resumes after the last node that finished. LangGraph's
        # default ("async") writes in the background and a SIGKILL loses the writes still in flight.
        if snapshot.next:  # killed mid-episode: continue from the last finished node
            out = await graph.ainvoke(None, config, durability="sync")
        elif snapshot.values.get("episode"):  # finished but not yet written when the run died
            out = snapshot.values
        else:
            out = await graph.ainvoke(state, config, durability="sync")
    if "episode" not in out:
        raise EpisodeContractError(
            f"loop graph ended without an `episode` in its state (task {task.id}); "
            "a loop's last node must set it (see agents/loops/base.py)"
        )
    try:
        return EpisodeRecord.model_validate(out["episode"])
    except ValueError as exc:  # the loop's own record is malformed: a bug in the loop, not in this item
        raise EpisodeContractError(
            f"loop graph ended with an `episode` that is not a valid EpisodeRecord (task {task.id}): "
            f"{' '.join(str(exc).split())}"
        ) from exc
