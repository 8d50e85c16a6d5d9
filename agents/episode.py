"""Running one episode of a loop: the one function the runner, the rollout workers and GRPO's rollouts share.

A loop's graph takes `{task, run_id, episode_id}` and ends with `episode` (an `EpisodeRecord` as JSON) in its
state (agents/loops/base.py). With a checkpointer, the episode's thread is its id, so a process killed
mid-episode resumes after the last node that finished, and a finished episode not yet written is read back
instead of being run again.
"""

from __future__ import annotations

from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import StateGraph

from strop.agents.loops.base import episode_input
from strop.memory.records import EpisodeRecord
from strop.sandbox.tasks.base import Task


class EpisodeContractError(RuntimeError):
    """A loop graph that ended without an `episode` in its state."""


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
    return EpisodeRecord.model_validate(out["episode"])
