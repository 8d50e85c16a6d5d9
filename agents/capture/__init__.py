"""Capture: bring your own agent. Episode-scoped OpenAI endpoints record every call an agent makes (token ids,
log-probs, model version), rewards arrive afterwards, and each call becomes a `pg` action with its group's
advantage. `AgentRun` is the Python side (in-process or against `strop serve --db`); the `agent` loop runs a
user's agent function under the runner like any other loop.
"""

from __future__ import annotations

from strop.agents.capture.agent_run import AgentEpisode, AgentRun, AgentRunError
from strop.agents.capture.credit import action_examples, group_advantages, group_examples, sft_examples
from strop.agents.capture.episodes import (
    CapturedCall,
    CapturedEpisode,
    CaptureError,
    ClosedEpisodeError,
    UnknownEpisodeError,
)
from strop.agents.capture.hub import CaptureHub, StoreSink
from strop.agents.capture.rollouts import Rollout, TaskRollouts, shared_run, task_seed

__all__ = [
    "AgentEpisode",
    "AgentRun",
    "AgentRunError",
    "CaptureError",
    "CaptureHub",
    "CapturedCall",
    "CapturedEpisode",
    "ClosedEpisodeError",
    "Rollout",
    "StoreSink",
    "TaskRollouts",
    "UnknownEpisodeError",
    "action_examples",
    "group_advantages",
    "group_examples",
    "sft_examples",
    "shared_run",
    "task_seed",
]
