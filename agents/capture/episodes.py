"""Captured episodes as typed objects: an episode's calls, rewards and how it ended.

A captured call is one request an agent sent to an episode's base URL: the messages as sent, the prompt ids
as the engine tokenized them, the sampled ids and their log-probs, the model version that answered, timing,
and the tool calls parsed from it. Each call becomes a `StepRecord` (one per choice) with exactly these ids,
so training never re-tokenizes text. Whether call k+1's prompt ids extend call k's prompt and completion ids
token for token (re-tokenization drift) is recorded on the step and counted on the episode.
"""

from __future__ import annotations

import math
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from strop.agents.loops.base import stable_id
from strop.memory.records import EPISODE_TRANSITIONS, EpisodeRecord, EpisodeStatus, StepRecord, new_id

CAPTURE_LOOP = "capture"


class CaptureError(RuntimeError):
    """A capture request that cannot be honoured; the message names the episode and what to do."""


class UnknownEpisodeError(CaptureError):
    """No episode with this id was opened here."""


class ClosedEpisodeError(CaptureError):
    """The episode is finished, failed or aborted: it takes no more calls."""


class ChoiceRecord(BaseModel):
    """One sampled choice of a call, with everything training needs."""

    text: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    logprobs: list[float] | None = None
    finish_reason: str
    model_version: str
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    invalid_tool_call: bool = Field(
        False, description="The text tried to call a tool and the call did not parse or named no tool."
    )


class CapturedCall(BaseModel):
    """One request made under an episode."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(description="Order of the call within its episode (0-based, by arrival).")
    endpoint: str = Field("chat", description="'chat' (chat/completions) or 'text' (completions).")
    messages: list[dict[str, Any]] | None = Field(None, description="The conversation as sent (chat).")
    prompt: str | None = Field(None, description="The raw prompt as sent (completions).")
    tools: list[dict[str, Any]] | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    choices: list[ChoiceRecord]
    started_at: float = Field(default_factory=time.time, description="Unix time the request arrived.")
    latency_s: float = 0.0
    sft_prompt: list[dict[str, Any]] | None = Field(
        None,
        description="The messages as the chat template saw them (tools rendered in the engine's format), for SFT "
        "examples that train on exactly the prompt the policy was given; not stored with the steps.",
    )
    sft_tools: list[dict[str, Any]] | None = Field(
        None, description="Tools passed to a template that renders them itself (its `tools=`)."
    )
    prefill: str = Field("", description="Text the prompt ended with to force a tool call (tool_choice).")
    extends_previous: bool | None = Field(
        None,
        description="Whether this call's prompt ids start with the previous call's prompt and completion ids "
        "(choice 0); None for the first call.",
    )


class Rewards(BaseModel):
    """Named rewards posted for an episode; its reward is their sum."""

    model_config = ConfigDict(extra="forbid")

    values: dict[str, float]

    @field_validator("values")
    @classmethod
    def _finite(cls, values: dict[str, float]) -> dict[str, float]:
        if not values:
            raise ValueError("give at least one reward, e.g. {'reward': 1.0}")
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise ValueError(f"reward {bad[0]!r} is not a finite number")
        return values


class CapturedEpisode(BaseModel):
    """An episode opened for capture; its calls arrive while the agent runs."""

    id: str = Field(default_factory=new_id)
    run_id: str
    task_id: str
    group: str = Field(description="Episodes of one group are credited together (default: the task).")
    group_size: int = Field(1, ge=1, description="How many episodes the group waits for before crediting.")
    metadata: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = Field(
        None,
        description="Calls that send no seed sample with seed + call index * seed_stride (reproducible agents).",
    )
    seed_stride: int = Field(
        1,
        ge=1,
        description="Seed step between calls; the agent loop uses n, so call j of rollout k (seed S + k) samples "
        "with S + k + j * n and no two rollouts of a group share a seed.",
    )
    status: EpisodeStatus = EpisodeStatus.RUNNING
    calls: list[CapturedCall] = Field(default_factory=list)
    rewards: dict[str, float] = Field(default_factory=dict)
    error: str | None = None
    answer: str | None = None
    reserved: int = Field(0, description="Call indices handed out so far (calls may overlap).")
    credited: bool = Field(False, description="Its group's examples were computed.")

    @property
    def reward(self) -> float | None:
        return sum(self.rewards.values()) if self.rewards else None

    @property
    def open(self) -> bool:
        return self.status == EpisodeStatus.RUNNING

    def reserve_call(self) -> int:
        """The index of a call that just arrived; its default seed derives from it."""
        if not self.open:
            raise ClosedEpisodeError(closed_message(self.id, self.status))
        self.reserved += 1
        return self.reserved - 1

    def call_seed(self, index: int) -> int | None:
        return None if self.seed is None else self.seed + index * self.seed_stride

    def close(self, status: EpisodeStatus) -> bool:
        """Move to a closed status; False when already there (idempotent), an error for any other move."""
        if self.status == status:
            return False
        if status not in EPISODE_TRANSITIONS.get(self.status, frozenset()):
            raise ClosedEpisodeError(
                f"episode {self.id} is already {self.status}; it cannot become {status}. "
                "Open a new episode with POST /episodes."
            )
        self.status = status
        return True

    def add_call(self, call: CapturedCall) -> list[StepRecord]:
        """Record a call (with its drift check against the call before it) and return its steps."""
        previous = max((c for c in self.calls if c.index < call.index), key=lambda c: c.index, default=None)
        if previous is not None and previous.choices and call.choices:
            before = previous.choices[0].prompt_token_ids + previous.choices[0].token_ids
            call.extends_previous = call.choices[0].prompt_token_ids[: len(before)] == before
        self.calls.append(call)
        return self.steps_of(call)

    def steps_of(self, call: CapturedCall) -> list[StepRecord]:
        base = sum(len(c.choices) for c in self.calls if c.index < call.index)
        return [
            StepRecord(
                id=stable_id(self.id, "call", call.index, j),
                index=base + j,
                role="assistant",
                model_version=ch.model_version,
                text=ch.text,
                prompt_token_ids=ch.prompt_token_ids,
                token_ids=ch.token_ids,
                logprobs=ch.logprobs,
                metadata={
                    "call": call.index,
                    "choice": j,
                    "endpoint": call.endpoint,
                    "messages": call.messages,
                    "prompt": call.prompt,
                    "tools": call.tools,
                    "temperature": call.temperature,
                    "top_p": call.top_p,
                    "finish_reason": ch.finish_reason,
                    "tool_calls": ch.tool_calls,
                    "invalid_tool_call": ch.invalid_tool_call,
                    "extends_previous": call.extends_previous,
                    "started_at": call.started_at,
                    "latency_s": call.latency_s,
                },
            )
            for j, ch in enumerate(call.choices)
        ]

    def drift(self) -> dict[str, int]:
        """Calls after the first whose prompt did or did not extend the previous call's ids."""
        checked = [c.extends_previous for c in self.calls if c.extends_previous is not None]
        return {"checked": len(checked), "extended": sum(checked), "differed": len(checked) - sum(checked)}

    def tool_call_counts(self) -> dict[str, int]:
        chosen = [ch for c in self.calls for ch in c.choices]
        return {
            "tool_calls": sum(len(ch.tool_calls) for ch in chosen),
            "invalid_tool_calls": sum(ch.invalid_tool_call for ch in chosen),
        }

    def outcome(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "calls": len(self.calls),
            "rewards": dict(self.rewards),
            "drift": self.drift(),
            **self.tool_call_counts(),
            "group": self.group,
            "group_size": self.group_size,
        }
        if self.metadata:
            out["metadata"] = self.metadata
        if self.error is not None:
            out["error"] = self.error
        if self.answer is not None:
            out["answer"] = self.answer
        return out

    def record(self, loop: str = CAPTURE_LOOP, *, with_steps: bool = True) -> EpisodeRecord:
        """The episode as the store keeps it (examples are added when its group is credited)."""
        steps = [s for c in sorted(self.calls, key=lambda c: c.index) for s in self.steps_of(c)]
        return EpisodeRecord(
            id=self.id,
            run_id=self.run_id,
            task_id=self.task_id,
            loop=loop,
            status=self.status,
            reward=self.reward,
            outcome=self.outcome(),
            steps=steps if with_steps else [],
        )


def closed_message(episode_id: str, status: EpisodeStatus | str) -> str:
    return (
        f"episode {episode_id} is {status} and takes no more calls: open a new one with POST /episodes "
        "(or AgentRun.episode) and use its base URL"
    )


def unknown_message(episode_id: str) -> str:
    return (
        f"no episode {episode_id} here: open one with POST /episodes and use the base_url it returns "
        "(episodes live on the server that opened them, or in its --db store)"
    )
