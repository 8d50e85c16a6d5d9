"""How a GRPO group is scored: rewards from strop critics, TRL's group advantages, revival of all-negative groups.

`CriticReward` is the reward function TRL calls; under strop's rollouts it reads back the rewards the rollout
already computed, so TRL trains on exactly the rewards stored. `group_advantages` is TRL's own formula, so the
advantages stored with each step are the ones TRL trained on. `revive` is arXiv 2505.11595's answer to a group
where every sample failed (see `training.grpo`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from strop.agents.engines.base import Message, SamplingParams
from strop.agents.loops.base import chat_request, stable_id, task_messages
from strop.critics.base import Critic, Critique
from strop.memory.records import CritiqueRecord, EpisodeRecord, ExampleKind, ExampleRecord, Role, StepRecord
from strop.sandbox.tasks.base import Split, Task
from strop.training.grpo_config import GRPOSettings


class CriticReward:
    """A TRL reward function built from a strop `Critic`.

    Under strop's rollouts it reads the reward the rollout already computed with this critic (the extra field
    `critic_rewards`, one list per completion), so TRL trains on exactly what the store holds. Used with TRL's own
    generation it critiques each completion against its task (the dataset's `task_id` column).
    """

    def __init__(
        self,
        critic: Critic,
        index: int,
        name: str,
        tasks: dict[str, Task] | None = None,
        run: Callable[[Coroutine[Any, Any, Any]], Any] | None = None,
    ) -> None:
        self.critic, self.index, self.tasks = critic, index, tasks or {}
        self.__name__ = f"critic_{name}"  # TRL logs rewards under the function's name
        self._run = run or _run_anywhere

    def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        critic_rewards: list[list[float]] | None = None,
        task_id: list[str] | None = None,
        **_: Any,
    ) -> list[float]:
        if critic_rewards is not None:
            return [float(r[self.index]) for r in critic_rewards]
        if task_id is None:
            raise ValueError(
                f"{self.__name__}: no `critic_rewards` from the rollout and no `task_id` column to "
                "critique against"
            )
        texts = [c[-1]["content"] if isinstance(c, list) else str(c) for c in completions]

        async def score() -> list[Critique]:
            return await asyncio.gather(
                *(
                    self.critic.critique(self.tasks[t], x, self.tasks[t].reference_solution)
                    for t, x in zip(task_id, texts, strict=True)
                )
            )

        return [c.reward for c in self._run(score())]


def _run_anywhere(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to completion from sync code, also when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def group_advantages(totals: list[list[float]], scale: str) -> list[list[float]]:
    """TRL's advantages (`sum_then_normalize`): reward minus its group's mean, divided by the std (Bessel) of the
    group ('group'), of the whole batch ('batch') or by nothing ('none'), with TRL's 1e-4 guard."""

    def std(xs: list[float]) -> float:
        if len(xs) < 2:
            return 0.0
        m = sum(xs) / len(xs)
        return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))

    flat = [r for g in totals for r in g]
    batch_std = std(flat)
    out = []
    for g in totals:
        mean = sum(g) / len(g)
        div = {"group": std(g) + 1e-4, "batch": batch_std + 1e-4}.get(scale, 1.0)
        out.append([(r - mean) / div for r in g])
    return out


@dataclass
class GroupMember:
    """One slot of a task's GRPO group, as TRL trains it."""

    step_index: int  # index of the step in the episode that holds this sample
    prompt_ids: list[int]  # the task's prompt: revisions are trained under it too
    completion_ids: list[int]
    logprobs: list[float]
    rewards: list[float]  # one per critic
    total: float
    correct: bool


@dataclass
class TaskGroup:
    """A task's group after scoring and revival, and the episode that records it."""

    task: Task
    episode: EpisodeRecord
    members: list[GroupMember]
    all_negative: bool = False
    revived: int = 0  # failed samples replaced by correct revisions
    advantages: list[float] = field(default_factory=list)
    critiques: list[Critique] = field(default_factory=list)  # the first critic's, one per original sample


async def critique_all(
    critics: Sequence[tuple[str, Critic, float]], task: Task, text: str
) -> tuple[list[float], float, Critique]:
    """Every critic's reward for one answer, their weighted total, and the first critic's critique (the one
    that decides whether the answer failed)."""
    critiques = await asyncio.gather(
        *(c.critique(task, text, task.reference_solution) for _, c, _ in critics)
    )
    rewards = [c.reward for c in critiques]
    return rewards, sum(w * r for (_, _, w), r in zip(critics, rewards, strict=True)), critiques[0]


def eos_id(engine: Any) -> int:
    """The engine tokenizer's EOS id: the one token of an empty completion (TRL needs at least one)."""
    tok = getattr(engine, "tokenizer", None)
    return int(getattr(tok, "eos_token_id", 0) or 0)


async def revive(
    group: TaskGroup,
    *,
    engine: Any,
    critics: Sequence[tuple[str, Critic, float]],
    settings: GRPOSettings,
    loop_config: BaseModel,
    system_prompt: str | None,
) -> int:
    """Revise one failed answer of an all-negative group with the first critic's critique; correct revisions
    replace failed samples (under the task's own prompt) and are stored as extra steps of the group's episode.
    Returns the number of revisions sampled."""
    s = settings
    task, ep = group.task, group.episode
    failed = group.members[0]
    failed_step = next(x for x in ep.steps if x.index == failed.step_index)
    critique = group.critiques[0]
    text = critique.text or "the answer is not correct"
    messages = [
        *task_messages(task, system_prompt),
        Message(role="assistant", content=failed_step.text),
        Message(role="user", content=s.revision_prompt.format(critique=text)),
    ]
    cfg = loop_config
    seed_base = getattr(cfg, "seed", None)
    sampling = SamplingParams(
        n=s.revisions,
        temperature=s.temperature,
        top_p=getattr(cfg, "top_p", 1.0),
        max_tokens=s.max_completion_length,
        stop=list(getattr(cfg, "stop", []) or []),
        logprobs=True,
        seed=int(stable_id(s.seed if seed_base is None else seed_base, "revise", ep.id)[:12], 16),
    )
    [completions] = await engine.generate([chat_request(messages, sampling)])
    next_index = max(x.index for x in ep.steps) + 1
    slots = iter(range(len(group.members) - 1))  # replace failed samples in order; keep one negative
    for k, c in enumerate(completions):
        rewards, total, verdict = await critique_all(critics, task, c.text)
        index = next_index + k
        step_id = stable_id(ep.id, "revision", k)
        slot = next(slots, None) if verdict.correct else None
        ep.steps.append(
            StepRecord(
                id=step_id,
                index=index,
                role="assistant",
                model_version=c.model_version,
                text=c.text,
                prompt_token_ids=c.prompt_token_ids,
                token_ids=c.token_ids,
                logprobs=c.logprobs,
                reward=total,
                metadata={
                    "finish_reason": str(c.finish_reason),
                    "extracted": verdict.extracted,
                    "revision_of": failed.step_index,
                    "critique": text,
                    "revived": verdict.correct,
                },
            )
        )
        ep.critiques.append(
            CritiqueRecord(
                id=stable_id(ep.id, "revision-critique", k),
                step_id=step_id,
                critic_version=verdict.critic_version,
                verdict=str(verdict.verdict),
                first_wrong_step=verdict.first_wrong_step,
                text=verdict.text,
                parsed=verdict.parsed,
                corrected_solution=verdict.corrected_solution,
            )
        )
        if slot is None:
            continue
        group.members[slot] = GroupMember(
            step_index=index,
            prompt_ids=failed.prompt_ids,
            completion_ids=list(c.token_ids) or [eos_id(engine)],
            logprobs=list(c.logprobs or []),
            rewards=rewards,
            total=total,
            correct=True,
        )
        group.revived += 1
        if getattr(cfg, "emit_examples", False) and task.split == Split.TRAIN:
            # A correct revision is a correct answer to the plain prompt: SFT data like best-of-N's own.
            ep.examples.append(
                ExampleRecord(
                    id=stable_id(ep.id, "revision-example", k),
                    kind=ExampleKind.SFT,
                    role=Role.POLICY,
                    payload={
                        "prompt": [m.model_dump() for m in task_messages(task, system_prompt)],
                        "completion": [{"role": "assistant", "content": c.text}],
                    },
                    episode_id=ep.id,
                    task_id=task.id,
                    split=str(task.split),
                )
            )
    return len(completions)
