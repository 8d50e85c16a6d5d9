"""GRPO over TRL's `GRPOTrainer`, with strop trajectories as the rollouts and strop critics as the rewards.

TRL owns the optimisation (the clipped surrogate, `loss_type`, `beta`, reward scaling, LoRA through PEFT); strop
owns the rollouts. TRL's `rollout_func` hook hands us each generation batch's prompts (every task repeated
`num_generations` times); `StropRollout` maps them back to tasks and runs the stage's loop on them (best-of-N
with n = num_generations), so a GRPO group is exactly a best-of-N episode:

- **Weights shared, not synced.** The loop samples from `HFEngine.from_model(trainer's model)`: the engine wraps
  the very model object the trainer updates (the PEFT wrapper included), so each step samples from the current
  weights with no copy and no reload. TRL's own `generate` is never called.
- **Batched wide.** All tasks of a generation batch run as concurrent episodes on one event loop, so their
  `generate` calls reach the engine together and run as one forward pass (8 tasks x 8 samples = 64 rows).
- **Scored by critics.** Every sample is judged by each configured critic (the verifier now; several, weighted).
  The per-critic rewards travel to TRL as an extra rollout field, and the reward functions TRL calls
  (`CriticReward`, one per critic, with TRL's `reward_weights`) read them back, so TRL trains on exactly the
  rewards stored. Group advantages are computed here with TRL's formula (`sum_then_normalize`: group mean,
  scaled by the group's or the batch's std per `scale_rewards`) and stored in each step's metadata.
- **Stored like any run.** Every group is written as an episode (token ids, log-probs, rewards, advantages,
  the model step it came from) under the stage's run id, so a GRPO run is inspectable with `strop runs` and its
  rollouts feed later DPO/SFT stages (the loop's own SFT examples are kept).
- **All-negative groups revived** (arXiv 2505.11595, off by default: `revive_all_negative`). When every sample of
  a task fails, GRPO's advantages are all zero and the task teaches nothing. The first critic says what is wrong
  with one failed answer, the policy revises it (one more generation with the critique in the prompt), and each
  correct revision replaces a failed sample, trained under the original prompt, so the group carries signal.
  Revisions are stored as extra steps (`revision_of`); all-negative and revived groups are counted in the job's
  metrics.
"""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import functools
import importlib.util
import json
import math
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from strop.agents.engines.base import Message, SamplingParams
from strop.agents.loops.base import chat_request, stable_id, task_messages
from strop.critics.base import Critic, Critique
from strop.memory.records import (
    CritiqueRecord,
    EpisodeRecord,
    ExampleKind,
    ExampleRecord,
    Role,
    RunRecord,
    RunStatus,
    StepRecord,
)
from strop.sandbox.tasks.base import Split, Task
from strop.training import common
from strop.training.sft import LoraSettings
from strop.training.tracking import ReportTo, TrainHooks
from strop.training.trainers import TrainerKind, TrainOutcome, TrainRequest, register_trainer

# TRL 1.16's values, used only if its source cannot be read (see `allowed_loss_types`).
_FALLBACK_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")


@functools.cache
def allowed_loss_types() -> tuple[str, ...]:
    """The `loss_type` values the installed TRL accepts, read from `GRPOConfig`'s own help text.

    Read from the source file, not by importing TRL: settings are validated when a recipe loads, and importing
    TRL (transformers, torch) takes seconds to tens of seconds.
    """
    import re

    try:
        spec = importlib.util.find_spec("trl")
        root = Path(next(iter(spec.submodule_search_locations)))  # type: ignore[union-attr, arg-type]
        tree = ast.parse((root / "trainer" / "grpo_config.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "loss_type":
                call = node.value
                assert isinstance(call, ast.Call)
                meta = next(k.value for k in call.keywords if k.arg == "metadata")
                help_text = ast.literal_eval(meta)["help"]
                part = re.search(r"Supported values are (.*?)\.\s", help_text)
                values = tuple(re.findall(r"'([a-z_]+)'", part.group(1))) if part else ()
                if values:
                    return values
    except (
        OSError,
        SyntaxError,
        StopIteration,
        AssertionError,
        KeyError,
        ValueError,
        TypeError,
        AttributeError,
    ):
        # An unreadable or reshaped TRL source: fall back to the values of the TRL version strop pins.
        return _FALLBACK_LOSS_TYPES
    return _FALLBACK_LOSS_TYPES


# ----------------------------------------------------------------------------------------------- settings


def _verifier(task_set: Any, engine: Any) -> Critic:
    from strop.critics.verifier import VerifierCritic

    return VerifierCritic(task_set)


# Critics a reward can name in settings: name -> factory(task_set, policy engine). LLM critics join here.
CRITICS: dict[str, Callable[[Any, Any], Critic]] = {"verifier": _verifier}


class RewardSpec(BaseModel):
    """One reward: a critic and its weight in the sum TRL turns into advantages."""

    model_config = ConfigDict(extra="forbid")

    critic: str = Field(
        "verifier",
        description="Critic that scores each sample (its Critique.reward): 'verifier' "
        "(the task set's ground truth).",
    )
    weight: float = Field(
        1.0, description="Weight of this critic's reward in the total (TRL `reward_weights`)."
    )

    @field_validator("critic")
    @classmethod
    def _known_critic(cls, v: str) -> str:
        if v not in CRITICS:
            raise ValueError(f"unknown critic {v!r}; known critics: {', '.join(sorted(CRITICS))}")
        return v


class GRPOSettings(BaseModel):
    """GRPO hyper-parameters; they map onto TRL's `GRPOConfig` (and the stage loop's sampling)."""

    model_config = ConfigDict(extra="forbid")

    num_generations: int = Field(
        8,
        ge=2,
        description="Samples per task (the GRPO group); the stage's loop samples this many (its `n`).",
    )
    temperature: float = Field(
        0.8,
        gt=0,
        le=10.0,
        description="Sampling temperature of the rollouts; TRL divides "
        "the logits by the same value when it scores them.",
    )
    max_completion_length: int = Field(
        64, ge=1, description="Most new tokens per sample (the loop's `max_tokens`)."
    )
    batch_size: int = Field(
        16,
        ge=1,
        description="Completions per forward/backward micro-batch (TRL per_device_train_batch_size).",
    )
    grad_accum: int = Field(4, ge=1, description="Micro-batches per optimizer step (gradient accumulation).")
    generation_batch_size: int | None = Field(
        None,
        validate_default=True,
        description="Completions sampled per generation, i.e. (tasks per generation) x num_generations, all sent "
        "to the engine at once; None: batch_size x grad_accum (one generation per optimizer step). "
        "Must hold whole groups (a multiple of num_generations) and whole micro-batches.",
    )
    epochs: float = Field(1.0, gt=0, description="Passes over the stage's training tasks.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides `epochs` when set.")
    learning_rate: float = Field(
        1e-4, gt=0, description="Peak learning rate (LoRA ~1e-4..5e-4, full fine-tuning ~1e-6..1e-5)."
    )
    lr_scheduler: str = Field(
        "constant", description="Transformers scheduler name: constant, linear, cosine..."
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    loss_type: str = Field(
        "dapo",
        description="TRL loss formulation: dapo (token-level, no length bias), grpo, "
        "dr_grpo, bnpo, cispo, sapo, luspo, vespo.",
    )
    beta: float = Field(
        0.0,
        ge=0,
        description="KL coefficient against the parent model; 0 loads no reference "
        "model (faster, less memory).",
    )
    epsilon: float = Field(0.2, gt=0, description="Lower clipping range of the importance ratio.")
    epsilon_high: float | None = Field(
        None, gt=0, description="Upper clipping range (DAPO's clip-higher, e.g. 0.28); None: same as epsilon."
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group",
        description="Divide advantages by the reward std of the group, of the whole batch, or not at all "
        "(Dr. GRPO).",
    )
    num_iterations: int = Field(
        1, ge=1, description="Optimisation passes over each generation batch (GRPO's mu)."
    )
    mask_truncated_completions: bool = Field(
        False, description="Leave samples cut at max_completion_length out of the loss (DAPO)."
    )
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec()],
        min_length=1,
        description="Critics whose weighted rewards score each sample; the first one "
        "also decides which samples failed and critiques them for revival.",
    )
    revive_all_negative: bool = Field(
        False,
        description="When all samples of a task fail, revise one failed answer "
        "with the first critic's critique and let correct revisions "
        "replace failed samples (arXiv 2505.11595).",
    )
    revisions: int = Field(
        1,
        ge=1,
        le=16,
        description="Revisions sampled for an all-negative group; each correct one "
        "replaces a failed sample (at most num_generations - 1).",
    )
    revision_prompt: str = Field(
        "Your answer is wrong: {critique}. Solve the problem again and give the corrected answer.",
        description="The user turn that asks for a revision after the failed answer; {critique} is filled in.",
    )
    lora: LoraSettings | None = Field(
        default_factory=LoraSettings, description="LoRA settings; omit (or none) for full fine-tuning."
    )
    merge: bool = Field(
        False,
        description="Merge the adapter into the weights and save a full model (else keep "
        "the adapter over the base).",
    )
    seed: int = Field(
        0,
        description="Seed for TRL (task order, adapter initialisation) and for rollout sampling "
        "when the loop config has no seed.",
    )
    bf16: bool | None = Field(
        None, description="bf16 mixed precision; None means only when a CUDA GPU is present."
    )
    report_to: ReportTo
    logging_steps: int = Field(1, ge=1, description="Log TRL's metrics every this many steps.")

    @field_validator("loss_type")
    @classmethod
    def _known_loss(cls, v: str) -> str:
        allowed = allowed_loss_types()
        if v not in allowed:
            raise ValueError(f"unknown loss_type {v!r}; TRL accepts: {', '.join(allowed)}")
        return v

    @field_validator("generation_batch_size")
    @classmethod
    def _whole_groups(cls, v: int | None, info: ValidationInfo) -> int | None:
        d = info.data
        if not {"num_generations", "batch_size", "grad_accum"} <= d.keys():
            return v  # an earlier field failed; pydantic reports that one
        g, b = d["num_generations"], d["batch_size"]
        if v is None:
            total = b * d["grad_accum"]
            if total % g:
                raise ValueError(
                    f"batch_size x grad_accum = {b} x {d['grad_accum']} = {total} completions per generation is not "
                    f"a multiple of num_generations ({g}): a generation must hold whole groups; set "
                    f"generation_batch_size, or batch_size/grad_accum"
                )
            return v
        if v < 1:
            raise ValueError(f"generation_batch_size must be at least 1, got {v}")
        if v % g:
            raise ValueError(
                f"generation_batch_size ({v}) is not a multiple of num_generations ({g}): a generation "
                "must hold whole groups"
            )
        if v % b:
            raise ValueError(
                f"generation_batch_size ({v}) is not a multiple of batch_size ({b}): a generation must "
                "split into whole micro-batches"
            )
        return v

    @field_validator("revision_prompt")
    @classmethod
    def _has_critique(cls, v: str) -> str:
        if "{critique}" not in v:
            raise ValueError("revision_prompt must contain {critique}, where the critic's text goes")
        return v

    @property
    def completions_per_generation(self) -> int:
        return self.generation_batch_size or self.batch_size * self.grad_accum


# ------------------------------------------------------------------------------------------------ rewards


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


# ----------------------------------------------------------------------------------------------- rollouts


@dataclass
class _Member:
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
    members: list[_Member]
    all_negative: bool = False
    revived: int = 0  # failed samples replaced by correct revisions
    advantages: list[float] = field(default_factory=list)
    critiques: list[Critique] = field(default_factory=list)  # the first critic's, one per original sample


@dataclass
class RolloutStats:
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
            await asyncio.gather(*(self._revive(g) for g in groups if g.all_negative))
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

    async def _critique_all(self, task: Task, text: str) -> tuple[list[float], float, Critique]:
        critiques = await asyncio.gather(
            *(c.critique(task, text, task.reference_solution) for _, c, _ in self.critics)
        )
        rewards = [c.reward for c in critiques]
        return rewards, sum(w * r for (_, _, w), r in zip(self.critics, rewards, strict=True)), critiques[0]

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
        scored = await asyncio.gather(*(self._critique_all(task, s.text) for s in samples))
        members = [
            _Member(
                step_index=s.index,
                prompt_ids=list(s.prompt_token_ids or []),
                completion_ids=list(s.token_ids or []) or [self._eos()],
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

    def _eos(self) -> int:
        tok = getattr(self.engine, "tokenizer", None)
        return int(getattr(tok, "eos_token_id", 0) or 0)

    async def _revive(self, group: TaskGroup) -> None:
        """Revise one failed answer with the first critic's critique; correct revisions replace failed samples."""
        s = self.settings
        task, ep = group.task, group.episode
        failed = group.members[0]
        failed_step = next(x for x in ep.steps if x.index == failed.step_index)
        critique = group.critiques[0]
        text = critique.text or "the answer is not correct"
        messages = [
            *task_messages(task, self.system_prompt),
            Message(role="assistant", content=failed_step.text),
            Message(role="user", content=s.revision_prompt.format(critique=text)),
        ]
        cfg = self.loop_config
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
        [completions] = await self.engine.generate([chat_request(messages, sampling)])
        self.stats.revisions += len(completions)
        next_index = max(x.index for x in ep.steps) + 1
        slots = iter(range(len(group.members) - 1))  # replace failed samples in order; keep one negative
        for k, c in enumerate(completions):
            rewards, total, verdict = await self._critique_all(task, c.text)
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
            group.members[slot] = _Member(
                step_index=index,
                prompt_ids=failed.prompt_ids,
                completion_ids=list(c.token_ids) or [self._eos()],
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
                            "prompt": [m.model_dump() for m in task_messages(task, self.system_prompt)],
                            "completion": [{"role": "assistant", "content": c.text}],
                        },
                        episode_id=ep.id,
                        task_id=task.id,
                        split=str(task.split),
                    )
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


# ------------------------------------------------------------------------------------------------ training


def run_grpo(
    rollout: StropRollout,
    *,
    model_path: str | Path,
    output_dir: str | Path,
    settings: GRPOSettings | None = None,
    adapter_path: str | Path | None = None,
    hooks: TrainHooks | None = None,
) -> TrainOutcome:
    """Train with GRPO on `rollout`'s tasks and save the result in `output_dir` (adapter kept, or merged)."""
    import warnings

    from trl import GRPOConfig, GRPOTrainer

    cfg = settings or rollout.settings
    out, started = common.start_run(output_dir)
    warnings.filterwarnings("ignore", message="You are using 'rollout_func'", category=UserWarning)
    tokenizer = common.load_tokenizer(model_path)
    model = common.load_parent(model_path, adapter_path, lora=cfg.lora is not None)
    args = common.training_args(
        GRPOConfig,
        cfg,
        out,
        max_steps=cfg.max_steps or -1,
        weight_decay=cfg.weight_decay,
        generation_batch_size=cfg.generation_batch_size,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        loss_type=cfg.loss_type,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high,
        scale_rewards=cfg.scale_rewards,
        num_iterations=cfg.num_iterations,
        mask_truncated_completions=cfg.mask_truncated_completions,
        reward_weights=rollout.reward_weights,
        # The engine samples from the live model, in whatever mode the trainer left it: no dropout anywhere, so
        # sampling, the old log-probs and the loss all see the same function.
        disable_dropout=True,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=rollout.reward_funcs(),
        args=args,
        train_dataset=rollout.dataset(),
        processing_class=tokenizer,
        peft_config=common.new_adapter_config(cfg.lora, adapter_path),
        rollout_func=rollout,
    )
    try:
        train_started = time.monotonic()
        result = common.train(trainer, hooks)
        train_seconds = time.monotonic() - train_started
        check = _advantage_check(trainer, rollout)
    finally:
        rollout.close()
    st = rollout.stats
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    metrics: dict[str, Any] = {
        "grpo_steps": st.steps,
        "groups": st.groups,
        "samples": st.samples,
        "sample_accuracy": st.correct / st.samples if st.samples else 0.0,
        "all_negative_groups": st.all_negative,
        "revived_groups": st.revived_groups,
        "revised_samples": st.revised_samples,
        "revisions_sampled": st.revisions,
        "episodes_written": st.episodes_written,
        "rollout_seconds": st.rollout_seconds,
        "store_write_seconds": st.write_seconds,
        "trainer_seconds": train_seconds,
        "store_write_share": st.write_seconds / train_seconds if train_seconds else 0.0,
        "seconds_per_step": train_seconds / max(int(result.global_step), 1),
        "first_reward": rewards[0] if rewards else None,
        "last_reward": rewards[-1] if rewards else None,
        "run_id": rollout.run_id,
    }
    engine_stats = getattr(rollout.engine, "stats", None)
    if engine_stats is not None:
        metrics["engine_mean_batch_rows"] = engine_stats.mean_batch_size
    if check is not None:
        metrics["advantage_max_diff_vs_trl"] = check
    return common.save_outcome(
        trainer.model,
        tokenizer,
        result,
        cfg=cfg,
        out=out,
        model_path=model_path,
        examples=st.samples,
        started=started,
        metrics=metrics,
        log_history=trainer.state.log_history,
    )


def _advantage_check(trainer: Any, rollout: StropRollout) -> float | None:
    """Largest difference between the advantages TRL used for the last generation batch and those stored (reads
    TRL's private completion log, so None if TRL changed it)."""
    try:
        trl_adv = list(trainer._logs["advantages"])
        ours = rollout.last_advantages
        if not ours or len(trl_adv) != len(ours):
            return None
        return max(abs(a - b) for a, b in zip(trl_adv, ours, strict=True))
    except (AttributeError, KeyError, TypeError, ValueError):  # TRL's private log changed shape: no check
        return None


# ------------------------------------------------------------------------------------------------ the kind


def _rollout_from_request(req: TrainRequest) -> StropRollout:
    from strop.agents.loops.registry import get_loop

    ctx = req.context
    missing = [k for k in ("task_set", "tasks") if k not in ctx]
    if missing:
        raise ValueError(
            f"the grpo trainer makes its own rollouts and needs {', '.join(missing)} in its context "
            "(a recipe stage hands it the stage's task set and this cycle's tasks)"
        )
    spec = ctx.get("loop") or get_loop("best_of_n")
    runner = ctx.get("runner")
    return StropRollout(
        spec=spec,
        loop_config=ctx.get("loop_config"),
        task_set=ctx["task_set"],
        tasks=ctx["tasks"],
        settings=req.settings,
        store=req.store,
        run_id=ctx.get("run_id") or stable_id("grpo-run", req.job_id),
        job_id=req.job_id,
        critics=ctx.get("critics"),
        concurrency=getattr(runner, "concurrency", 64),
    )


def _train(req: TrainRequest) -> TrainOutcome:
    rollout = _rollout_from_request(req)
    created = False
    if req.store is not None:
        created = req.store.get_run(rollout.run_id) is None
        req.store.create_run(
            RunRecord(
                id=rollout.run_id,
                loop=rollout.spec.name,
                model_ids=[req.parent.id],
                config={
                    "trainer": "grpo",
                    "job_id": req.job_id,
                    "loop": rollout.loop_config.model_dump(mode="json"),
                    "grpo": req.settings.model_dump(mode="json"),
                },
            )
        )
    try:
        outcome = run_grpo(
            rollout,
            model_path=req.parent.path,
            adapter_path=req.parent.adapter_path,
            output_dir=req.output_dir,
            settings=req.settings,
            hooks=req.hooks,
        )
    except BaseException:
        if created:
            req.store.finish_run(rollout.run_id, RunStatus.FAILED)
        raise
    if req.store is not None:
        req.store.finish_run(rollout.run_id, RunStatus.FINISHED)
    return outcome


GRPO = register_trainer(
    TrainerKind(
        name="grpo",
        settings=GRPOSettings,
        example_kinds=(),
        train=_train,
        online=True,
        description="GRPO (TRL GRPOTrainer) on-line: the stage's loop samples each task's group from the live weights, "
        "critics score it, every group is stored as an episode with its advantages; optional revival of "
        "all-negative groups with critiques.",
    )
)
