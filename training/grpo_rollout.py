"""GRPO's rollouts: `StropRollout`, TRL's `rollout_func`, runs the stage's loop on each generation batch's tasks
from the live weights, scores the groups (`training.grpo_rewards`) and stores them as episodes."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from strop.agents.loops.base import stable_id, task_messages
from strop.critics.base import Critic
from strop.memory.records import EpisodeRecord
from strop.sandbox.tasks.base import Task
from strop.training.grpo_config import CRITICS, GRPOSettings
from strop.training.grpo_rewards import (
    CriticReward,
    GroupMember,
    TaskGroup,
    critique_all,
    eos_id,
    group_advantages,
    revive,
)


@dataclass
class RolloutStats:
    """What a job's rollouts did, counted as they go; the job's metrics report them."""

    steps: int = 0
    groups: int = 0
    samples: int = 0
    correct: int = 0
    all_negative: int = 0
    revived_groups: int = 0
    revised_samples: int = 0
    revisions: int = 0
    episodes_written: int = 0
    rollout_seconds: float = 0.0
    write_seconds: float = 0.0


def _merge_for_sampling(model: Any) -> bool:
    """Fold a PEFT adapter into the base weights for the rollout (unmerged after it): decoding then runs one
    matmul per layer instead of three, about 1.5x faster for SmolLM2 with r=16 on all linear layers. Only with
    float32 base weights, where merging and unmerging again leaves them as they were to rounding (~1e-7)."""
    import torch

    if (
        model is None
        or not hasattr(model, "merge_adapter")
        or next(model.parameters()).dtype != torch.float32
    ):
        return False
    model.merge_adapter()
    return True


def _prompt_key(messages: Sequence[Any]) -> str:
    rows = [(m["role"], m["content"]) if isinstance(m, dict) else (m.role, m.content) for m in messages]
    return json.dumps(rows)


class StropRollout:
    """TRL's `rollout_func`: runs the stage's loop on the tasks of each generation batch and stores the groups.

    Usable without a trainer (tests, other RL drivers): give it an `engine` and call `collect(tasks, step)` and
    `write(groups)`. Under `GRPOTrainer` it builds its engine on first call from the trainer's live model.
    """

    def __init__(
        self,
        *,
        spec: Any,
        loop_config: BaseModel | dict[str, Any] | None,
        task_set: Any,
        tasks: Sequence[Task],
        settings: GRPOSettings,
        store: Any = None,
        run_id: str = "",
        job_id: str = "",
        engine: Any = None,
        critics: Sequence[tuple[str, Critic, float]] | None = None,
        concurrency: int = 64,
    ) -> None:
        self.spec, self.task_set, self.settings, self.store = spec, task_set, settings, store
        self.run_id, self.job_id, self.engine, self.concurrency = run_id, job_id, engine, concurrency
        self.loop_config = self._align_loop_config(spec, loop_config, settings)
        self.system_prompt = getattr(self.loop_config, "system_prompt", None)
        self.tasks = list(tasks)
        self.by_id = {t.id: t for t in self.tasks}
        self.by_prompt: dict[str, Task] = {}
        for t in self.tasks:
            self.by_prompt.setdefault(_prompt_key(task_messages(t, self.system_prompt)), t)
        self.critics = (
            list(critics)
            if critics is not None
            else [(r.critic, CRITICS[r.critic](task_set, engine), r.weight) for r in settings.rewards]
        )
        self.stats = RolloutStats()
        self.last_advantages: list[float] = []  # of the last generation batch, in TRL's order
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def _align_loop_config(
        spec: Any, config: BaseModel | dict[str, Any] | None, s: GRPOSettings
    ) -> BaseModel:
        """The loop config with GRPO's sampling: n = num_generations, temperature, max_tokens. A value the stage
        set explicitly and differently is refused (TRL scores samples with its own temperature and group size)."""
        if isinstance(config, BaseModel):
            given = {k: getattr(config, k) for k in config.model_fields_set}
            base = config.model_dump()
        else:
            given = dict(config or {})
            base = dict(given)
        wanted = {"n": s.num_generations, "temperature": s.temperature, "max_tokens": s.max_completion_length}
        setting = {
            "n": "num_generations",
            "temperature": "temperature",
            "max_tokens": "max_completion_length",
        }
        fields = spec.config.model_fields
        for key, value in wanted.items():
            if key not in fields:
                continue
            if key in given and given[key] != value:
                raise ValueError(
                    f"the {spec.name} loop config sets {key} = {given[key]!r} but the GRPO settings have "
                    f"{setting[key]} = {value!r}; GRPO samples with its own settings: make them agree (or drop {key} "
                    "from the loop config)"
                )
            base[key] = value
        return spec.parse_config(base)

    # --------------------------------------------------------------------------------------- the TRL hook
    def dataset(self) -> Any:
        """One row per task: the chat prompt TRL repeats num_generations times, and the task id."""
        from datasets import Dataset

        return Dataset.from_list(
            [
                {"prompt": [m.model_dump() for m in task_messages(t, self.system_prompt)], "task_id": t.id}
                for t in self.tasks
            ]
        )

    def reward_funcs(self) -> list[CriticReward]:
        return [CriticReward(c, i, name, self.by_id, self.run) for i, (name, c, _) in enumerate(self.critics)]

    @property
    def reward_weights(self) -> list[float]:
        return [w for _, _, w in self.critics]

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        from strop.agents.engines.hf import HFEngine

        g = self.settings.num_generations
        if self.engine is None:
            model = trainer.accelerator.unwrap_model(trainer.model)
            self.engine = HFEngine.from_model(
                model,
                trainer.processing_class,
                model_version=f"grpo-{self.job_id[:8]}",
                max_batch_size=max(64, self.settings.completions_per_generation),
                batch_wait_ms=10,
            )
        if len(prompts) % g:
            raise RuntimeError(f"TRL sent {len(prompts)} prompts, not whole groups of {g}")
        tasks = []
        for p in prompts[::g]:
            task = self.by_prompt.get(_prompt_key(p))
            if task is None:
                raise RuntimeError(f"a GRPO prompt matches none of the stage's tasks: {p!r}")
            tasks.append(task)
        model = self.engine.model if hasattr(self.engine, "model") else None
        merged = _merge_for_sampling(model)
        try:
            groups = self.run(self.collect(tasks, int(trainer.state.global_step)))
        finally:
            if merged:
                model.unmerge_adapter()
        self.write(groups)
        out: dict[str, Any] = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "critic_rewards": []}
        for group in groups:
            for m in group.members:
                out["prompt_ids"].append(m.prompt_ids)
                out["completion_ids"].append(m.completion_ids)
                out["logprobs"].append(m.logprobs)
                out["critic_rewards"].append(m.rewards)
        return out

    # ------------------------------------------------------------------------------------- collection
    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run a coroutine on this rollout's own event loop thread (the engine's batcher lives there), so it
        works from the trainer whether or not the calling thread is inside an event loop."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="strop-grpo-rollout", daemon=True
            )
            self._thread.start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if self._loop is not None:
            if self.engine is not None and hasattr(self.engine, "close"):
                asyncio.run_coroutine_threadsafe(self.engine.close(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            assert self._thread is not None
            self._thread.join(timeout=10)
            self._loop.close()
            self._loop = self._thread = None

    def _step_config(self, step: int) -> BaseModel:
        """A fresh, reproducible sampling stream for every step (a task seen again samples anew)."""
        if "seed" not in self.loop_config.model_fields:
            return self.loop_config
        base = self.loop_config.seed if self.loop_config.seed is not None else self.settings.seed
        return self.loop_config.model_copy(update={"seed": int(stable_id(base, "grpo", step)[:8], 16)})

    async def collect(self, tasks: Sequence[Task], step: int) -> list[TaskGroup]:
        """Run one episode per task concurrently, score every sample, revive all-negative groups, compute
        advantages, and annotate the episodes (not yet written)."""
        from strop.agents.episode import run_episode
        from strop.agents.loops.registry import LoopResources

        if self.engine is None:
            raise RuntimeError("StropRollout.collect needs an engine")
        started = time.monotonic()
        generation = self.stats.steps  # ids count generations: several may share an optimizer step
        graph = self.spec.make(
            LoopResources(engines={"policy": self.engine}, task_set=self.task_set, store=self.store),
            self._step_config(generation),
        ).compile()
        sem = asyncio.Semaphore(self.concurrency)

        async def one(i: int, task: Task) -> TaskGroup:
            async with sem:
                eid = stable_id("grpo", self.job_id, generation, i, task.id)
                episode = await run_episode(graph, task, self.run_id, episode_id=eid)
            return await self._score(task, episode, step)

        groups = list(await asyncio.gather(*(one(i, t) for i, t in enumerate(tasks))))
        if self.settings.revive_all_negative:
            sampled = await asyncio.gather(
                *(
                    revive(
                        g,
                        engine=self.engine,
                        critics=self.critics,
                        settings=self.settings,
                        loop_config=self.loop_config,
                        system_prompt=self.system_prompt,
                    )
                    for g in groups
                    if g.all_negative
                )
            )
            self.stats.revisions += sum(sampled)
        scale = self.settings.scale_rewards
        for group, adv in zip(
            groups, group_advantages([[m.total for m in g.members] for g in groups], scale), strict=True
        ):
            group.advantages = adv
            self._annotate(group, step)
        self.last_advantages = [a for g in groups for a in g.advantages]
        st = self.stats
        st.steps += 1
        st.groups += len(groups)
        st.samples += sum(len(g.members) for g in groups)
        st.correct += sum(m.correct for g in groups for m in g.members)
        st.all_negative += sum(g.all_negative for g in groups)
        st.revived_groups += sum(g.revived > 0 for g in groups)
        st.revised_samples += sum(g.revived for g in groups)
        st.rollout_seconds += time.monotonic() - started
        return groups

    async def _score(self, task: Task, episode: EpisodeRecord, step: int) -> TaskGroup:
        g = self.settings.num_generations
        samples = [
            s
            for s in sorted(episode.steps, key=lambda s: s.index)
            if s.token_ids is not None and not s.metadata.get("hinted")
        ][:g]
        if len(samples) < g:
            raise RuntimeError(
                f"the {self.spec.name} loop gave {len(samples)} samples for task {task.id}; GRPO needs "
                f"num_generations = {g} per task (is the loop a sampling loop with n = {g}?)"
            )
        scored = await asyncio.gather(*(critique_all(self.critics, task, s.text) for s in samples))
        members = [
            GroupMember(
                step_index=s.index,
                prompt_ids=list(s.prompt_token_ids or []),
                completion_ids=list(s.token_ids or []) or [eos_id(self.engine)],
                logprobs=list(s.logprobs or []),
                rewards=rewards,
                total=total,
                correct=first.correct,
            )
            for s, (rewards, total, first) in zip(samples, scored, strict=True)
        ]
        return TaskGroup(
            task=task,
            episode=episode,
            members=members,
            all_negative=not any(m.correct for m in members),
            critiques=[first for _, _, first in scored],
        )

    def _annotate(self, group: TaskGroup, step: int) -> None:
        """Write the group into its episode: which steps TRL trained on, with which rewards and advantages."""
        ep = group.episode
        version = f"{self.engine.model_version}@step{step}" if self.engine is not None else None
        names = [n for n, _, _ in self.critics]
        by_index = {s.index: s for s in ep.steps}
        for s in ep.steps:
            s.metadata.update(grpo_step=step, in_group=False)
            if version and s.model_version == getattr(self.engine, "model_version", None):
                s.model_version = version
        for slot, (m, adv) in enumerate(zip(group.members, group.advantages, strict=True)):
            s = by_index[m.step_index]
            s.reward = m.total
            s.metadata.update(
                in_group=True,
                group_slot=slot,
                advantage=adv,
                rewards=dict(zip(names, m.rewards, strict=True)),
            )
        ep.outcome["grpo"] = {
            "step": step,
            "generation": self.stats.steps,
            "job_id": self.job_id,
            "rewards": [m.total for m in group.members],
            "advantages": group.advantages,
            "all_negative": group.all_negative,
            "revived": group.revived,
        }

    def write(self, groups: Sequence[TaskGroup]) -> int:
        """Write the groups' episodes in one transaction; the time it takes is counted in the job's metrics."""
        if self.store is None or not groups:
            return 0
        started = time.monotonic()
        written = self.store.write_episodes([g.episode for g in groups])
        self.stats.write_seconds += time.monotonic() - started
        self.stats.episodes_written += written
        return written
