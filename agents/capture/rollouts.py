"""Rollouts of an agent function: n episodes per task as a group, and what goes wrong kept as failed episodes.

An agent that raises, hangs past its timeout or answers without ever calling the model gives a failed episode
with the error stored (type and message), and no training examples: credit (credit.py) counts only finished,
rewarded episodes. Nothing here talks HTTP itself; it drives an `AgentRun` (agent_run.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from strop.agents.capture.episodes import CapturedEpisode
from strop.agents.loops.base import stable_id
from strop.critics.base import Critique
from strop.sandbox.tasks.base import Task

if TYPE_CHECKING:
    from strop.agents.capture.agent_run import AgentEpisode, AgentRun

AgentFn = Callable[[Task, Any], Awaitable[Any]]
# a strop Critic, a TaskSet (its verifier), a function (task, answer) -> reward (sync or async), or None
RewardSource = Any


def task_seed(seed: int, task_id: str) -> int:
    """A task's seed stream, derived as `BestOfNConfig.sampling` derives it, so that best-of-N's sample k and
    rollout k of the agent loop start from the same seed (and sample the same tokens)."""
    return int(stable_id(seed, task_id)[:12], 16)


def describe(error: BaseException) -> str:
    """An error as stored on a failed episode: its type and message."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def check_agent(fn: Any, name: str = "the agent") -> AgentFn:
    """`fn` when it is an async function (or an object with an async `__call__`); else a TypeError naming it."""
    if inspect.iscoroutinefunction(fn) or (callable(fn) and inspect.iscoroutinefunction(type(fn).__call__)):
        return fn  # type: ignore[no-any-return]
    raise TypeError(
        f"{name} must be an async function `async def agent(task, client) -> str`; got {type(fn).__name__} "
        f"{fn!r} (a sync function would block the event loop the model is served from)"
    )


async def score(reward: RewardSource, task: Task, answer: str) -> tuple[float | None, Critique | None]:
    """The reward of `answer`: from a critic (with its critique), a task set's verifier, or a function."""
    if reward is None:
        return None, None
    if hasattr(reward, "critique"):
        critique = await reward.critique(task, answer, task.reference_solution)
        return float(critique.reward), critique
    if hasattr(reward, "verify") and hasattr(reward, "tasks"):
        from strop.critics.verifier import VerifierCritic

        return await score(VerifierCritic(reward), task, answer)
    if callable(reward):
        value = reward(task, answer)
        if inspect.isawaitable(value):
            value = await value
        return float(value), None
    raise TypeError(
        f"reward must be a strop Critic, a TaskSet, a function (task, answer) -> float, or None; got {reward!r}"
    )


@dataclass
class Rollout:
    """One run of an agent function on a task: how it ended, its answer, reward and error."""

    task_id: str
    index: int
    episode_id: str
    status: str = "running"
    answer: str | None = None
    reward: float | None = None
    correct: bool | None = None  # from the critic's verdict, when the reward came from one
    error: str | None = None
    calls: int = 0
    captured: CapturedEpisode | None = field(default=None, repr=False)  # local mode: the calls themselves

    def summary(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reward": self.reward,
            "error": self.error,
            "calls": self.calls,
            "answer": self.answer,
        }


@dataclass
class TaskRollouts:
    """The group of rollouts of one task."""

    task: Task
    rollouts: list[Rollout]

    @property
    def answers(self) -> list[str | None]:
        return [r.answer for r in self.rollouts]

    @property
    def rewards(self) -> list[float | None]:
        return [r.reward for r in self.rollouts]

    @property
    def statuses(self) -> list[str]:
        return [r.status for r in self.rollouts]


@dataclass
class RolloutSettings:
    """How the rollouts of a task run (see `AgentRun.rollout_task`)."""

    n: int = 4
    group: str | None = None
    run_id: str | None = None
    slots: asyncio.Semaphore | None = None
    timeout_s: float = 120.0
    reward: RewardSource = None
    seed: int | None = None


async def rollout_task(run: AgentRun, agent_fn: AgentFn, task: Task, s: RolloutSettings) -> TaskRollouts:
    """The n rollouts of `task` as one group; with a seed, rollout k's call j samples with
    `task_seed(seed, task.id) + k + j * n`."""
    check_agent(agent_fn)
    base = None if s.seed is None else task_seed(s.seed, task.id)
    one = [_rollout(run, agent_fn, task, k, s, None if base is None else base + k) for k in range(s.n)]
    return TaskRollouts(task, list(await asyncio.gather(*one)))


async def _rollout(
    run: AgentRun, agent_fn: AgentFn, task: Task, k: int, s: RolloutSettings, seed: int | None
) -> Rollout:
    async with s.slots if s.slots is not None else contextlib.nullcontext():
        ep = await run.episode(
            task,
            group=s.group or task.id,
            group_size=s.n,
            seed=seed,
            seed_stride=s.n,
            metadata={"rollout": k},
            run_id=s.run_id,
        )
        out = Rollout(task_id=task.id, index=k, episode_id=ep.id, captured=ep.captured)
        deadline = asyncio.timeout(s.timeout_s)
        try:
            async with deadline:
                answer = await agent_fn(task, ep.client())
        except Exception as e:  # the agent's own error: stored on the failed episode, never trained on
            # a TimeoutError the agent raised itself (a tool's) is its error, not our deadline
            hung = isinstance(e, TimeoutError) and deadline.expired()
            return await _failed(ep, out, f"timed out after {s.timeout_s:g} s" if hung else describe(e))
        out.answer = "" if answer is None else str(answer)
        out.calls = await ep.calls()
        if out.calls == 0:
            return await _failed(
                ep, out, "the agent never called the model (call it through the client it was given)"
            )
        try:
            out.reward, critique = await score(s.reward, task, out.answer)
        except Exception as e:  # a critic that broke: the rollout is not trained on a made-up reward
            return await _failed(ep, out, f"the reward failed: {describe(e)}")
        out.correct = critique.correct if critique is not None else None
        if out.reward is not None:
            await ep.reward(out.reward)
        await ep.finish(out.answer)
        out.status = ep.status
        return out


async def _failed(ep: AgentEpisode, out: Rollout, error: str) -> Rollout:
    await ep.fail(error)
    out.status, out.error = ep.status, error
    out.calls = await ep.calls()
    return out


@dataclass
class _Shared:
    engine: Any
    run: AgentRun
    slots: asyncio.Semaphore
    users: int = 0


_SHARED: dict[tuple[int, int], _Shared] = {}


@contextlib.asynccontextmanager
async def shared_run(
    engine: Any, *, concurrency: int = 64
) -> AsyncIterator[tuple[AgentRun, asyncio.Semaphore]]:
    """A local, memory-only AgentRun for `engine`, shared by everything in flight in this event loop, with a
    semaphore bounding its rollouts. One server serves every episode of a run; it stops when the last user
    leaves, so no server outlives the run that needed it (a later episode starts a new one, in milliseconds)."""
    from strop.agents.capture import agent_run

    key = (id(engine), id(asyncio.get_running_loop()))
    entry = _SHARED.get(key)
    if entry is None or entry.engine is not engine:
        entry = _Shared(engine, agent_run.AgentRun(engine, keep_closed=256), asyncio.Semaphore(concurrency))
        _SHARED[key] = entry
    entry.users += 1
    try:
        await entry.run.start()
        yield entry.run, entry.slots
    finally:
        entry.users -= 1
        if entry.users == 0:
            if _SHARED.get(key) is entry:
                del _SHARED[key]
            await entry.run.close()
