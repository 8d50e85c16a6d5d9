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

The kind is four modules: `grpo_config` (the settings, readable without TRL), `grpo_rewards` (critic rewards,
TRL's group advantages, revival), `grpo_rollout` (`StropRollout`, TRL's `rollout_func`) and this one (the TRL
trainer call and the kind's registration).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from strop.agents.loops.base import stable_id
from strop.memory.records import RunRecord, RunStatus
from strop.training import common
from strop.training.grpo_config import GRPOSettings
from strop.training.grpo_rollout import StropRollout
from strop.training.tracking import TrainHooks
from strop.training.trainers import TrainerKind, TrainOutcome, TrainRequest, register_trainer

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
        metrics["engine_mean_batch_rows"] = engine_stats.mean_running_rows
    if check is not None:
        metrics["advantage_max_diff_vs_trl"] = check
    # With beta > 0 over an adapter parent TRL keeps a "ref" copy of the parent's adapter; save_outcome drops it.
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
