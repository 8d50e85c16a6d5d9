"""What every loop shares with the runner: the episode contract and deterministic ids.

A loop is a LangGraph `StateGraph` whose input carries `task` (a `Task` as JSON), `run_id` and `episode_id`,
and whose final state carries `episode` (an `EpisodeRecord` as JSON). State holds only JSON values so any
checkpointer can persist it and a resumed episode deserialises without importing our classes.
Ids are derived from (run, task) so a rerun of the same run addresses the same episodes, steps and examples,
which is what makes writes idempotent and resumption skip finished work.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from strop.agents.engines.base import Completion, GenerationRequest, Message, SamplingParams
from strop.agents.reflection import render_memory
from strop.sandbox.tasks.base import Task

_NAMESPACE = uuid.UUID("6f1d3c1e-1b7a-4c55-9d0e-5a7c2f0b9e11")


def stable_id(*parts: object) -> str:
    """A 32-hex id that is a pure function of its parts (uuid5)."""
    return uuid.uuid5(_NAMESPACE, "\x1f".join(str(p) for p in parts)).hex


def episode_id(run_id: str, task_id: str) -> str:
    return stable_id("episode", run_id, task_id)


class EpisodeInput(TypedDict):
    """What the runner feeds every loop."""

    task: dict[str, Any]
    run_id: str
    episode_id: str


def episode_input(task: Task, run_id: str) -> EpisodeInput:
    return {"task": task.model_dump(mode="json"), "run_id": run_id, "episode_id": episode_id(run_id, task.id)}


def task_messages(
    task: Task, system_prompt: str | None, recalled: Sequence[Mapping[str, Any]] | None = None
) -> list[Message]:
    """The chat a policy sees for a task; SFT examples reuse it verbatim so training matches sampling.

    `recalled`: past failures on similar problems (reflection memory), rendered before the problem."""
    msgs = [Message(role="system", content=system_prompt)] if system_prompt else []
    block = render_memory(recalled or [])
    prompt = f"{block}\n\nNow solve this problem.\n{task.prompt}" if block else task.prompt
    return [*msgs, Message(role="user", content=prompt)]


def chat_request(messages: list[Message], sampling: SamplingParams) -> GenerationRequest:
    return GenerationRequest(messages=messages, sampling=sampling)


def completion_json(c: Completion) -> dict[str, Any]:
    return c.model_dump(mode="json")
