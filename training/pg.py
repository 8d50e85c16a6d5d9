"""Policy gradient on stored advantages (trainer kind `pg`): TRL's GRPO loss, fed from the store.

Multi-turn and multi-agent loops (self-correction, self-play games) score their actions themselves (SCoRe's
improvement bonus, SPIRAL's role-conditioned baselines) and emit one `ADVANTAGE` (or `GAME_TURN`) example per
action: the exact prompt token ids the policy saw, the action's token ids, the log-probs recorded when it was
sampled and the advantage (`memory.records.AdvantagePayload`). This kind trains on them with the clipped
surrogate, per completion token:

    loss = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) + beta * KL(new || ref)
    ratio = exp(logp_new - logp_sampled)

where `ref` is the parent version: with LoRA, the parent's own adapter (TRL keeps a frozen copy named "ref")
or, for a fresh adapter, the adapter-disabled model; for full fine-tuning, a frozen copy of the parent.

How TRL is used (a `GRPOTrainer` fed stored actions instead of fresh samples) is in `training.pg_trainer`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from strop.memory.records import AdvantagePayload, ExampleKind, ExampleRecord
from strop.training import common
from strop.training.pg_trainer import trainer_classes
from strop.training.settings import LrScheduler, OfflineTrainerSettings
from strop.training.tracking import TrainHooks
from strop.training.trainers import TrainerKind, TrainOutcome, TrainRequest, register_trainer

# The example kinds whose payload is an `AdvantagePayload`.
PG_KINDS: tuple[ExampleKind, ...] = (ExampleKind.ADVANTAGE, ExampleKind.GAME_TURN)
_COLUMNS = ("prompt_ids", "completion_ids", "logprobs", "advantage", "example_id")


class MalformedExampleError(ValueError):
    """A stored example whose payload is not a valid `AdvantagePayload`; the message names the example."""


class PGSettings(OfflineTrainerSettings):
    """Hyper-parameters of the `pg` kind (the shared ones in `training.settings`); they map onto TRL's
    `GRPOConfig`."""

    iterations: int = Field(
        1,
        ge=1,
        description="Optimizer passes over each batch before the next (GRPO's mu); the clip bounds how "
        "far these passes move the policy from the sampling one.",
    )
    epsilon: float = Field(
        0.2, gt=0, lt=1, description="Clip range below 1: the ratio is clipped at 1 - epsilon."
    )
    epsilon_high: float | None = Field(
        None,
        gt=0,
        description="Clip range above 1 (ratio clipped at 1 + epsilon_high); None means epsilon. "
        "DAPO's clip-higher uses 0.28.",
    )
    beta: float = Field(
        0.0,
        ge=0,
        description="Weight of the per-token KL(new || ref) to the parent version; 0 loads no reference "
        "(SCoRe's stage I keeps turn 1 near the base with a KL, e.g. 0.04).",
    )
    loss_type: Literal["dapo", "grpo", "bnpo"] = Field(
        "dapo",
        description="How TRL averages the per-token loss: 'dapo' over every token of the batch (TRL's "
        "default), 'grpo' per sequence then over sequences, 'bnpo' over the tokens of each micro-batch.",
    )
    temperature: float = Field(
        1.0,
        gt=0,
        description="Temperature the stored log-probs were sampled at; new log-probs are taken at the "
        "same temperature so the ratio compares like with like. Examples that record another one are refused.",
    )
    optimizer: str = Field(
        "adamw_torch",
        description="Transformers optimizer name (TrainingArguments.optim): adamw_torch, adafactor, sgd...",
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    lr_scheduler: LrScheduler = "constant"


def parse_examples(
    examples: list[ExampleRecord], settings: PGSettings | None = None
) -> list[AdvantagePayload]:
    """Each example's payload as an `AdvantagePayload`; a malformed one is refused with its id and the reason."""
    cfg = settings or PGSettings()
    out: list[AdvantagePayload] = []
    for ex in examples:
        try:
            p = AdvantagePayload.model_validate(ex.payload)
        except ValidationError as exc:
            reasons = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            raise MalformedExampleError(
                f"example {ex.id} ({ex.kind}, episode {ex.episode_id}) is not a valid pg payload: {reasons}. "
                "The loop that wrote it must emit an AdvantagePayload (prompt_ids, completion_ids, one sampling "
                "log-prob per completion token, advantage)."
            ) from None
        if p.temperature is not None and not math.isclose(p.temperature, cfg.temperature, rel_tol=1e-6):
            raise MalformedExampleError(
                f"example {ex.id} was sampled at temperature {p.temperature} but the pg settings say "
                f"{cfg.temperature}: the ratio would compare log-probs of two different distributions. Set "
                f"temperature = {p.temperature} (and train examples of one temperature per job)."
            )
        out.append(p)
    return out


def build_dataset(examples: list[ExampleRecord], settings: PGSettings | None = None) -> Any:
    """The columns `StoredActionTrainer` reads: prompt_ids, completion_ids, logprobs, advantage, example_id."""
    import datasets

    payloads = parse_examples(examples, settings)
    return datasets.Dataset.from_dict(
        {
            "prompt_ids": [p.prompt_ids for p in payloads],
            "completion_ids": [p.completion_ids for p in payloads],
            "logprobs": [[float(x) for x in p.logprobs] for p in payloads],
            "advantage": [float(p.advantage) for p in payloads],
            "example_id": [ex.id for ex in examples],
        }
    )


def run_pg(
    dataset: Any,
    *,
    model_path: str | Path,
    output_dir: str | Path,
    settings: PGSettings | None = None,
    adapter_path: str | Path | None = None,
    hooks: TrainHooks | None = None,
) -> TrainOutcome:
    """Train on stored actions (`build_dataset`'s columns) and save the result in `output_dir`."""
    import copy

    pg_config, trainer_cls = trainer_classes()
    cfg = settings or PGSettings()
    n = len(dataset)
    if n == 0:
        raise ValueError("pg needs at least one example")
    out, started = common.start_run(output_dir)
    tokenizer = common.load_tokenizer(model_path)
    model = common.load_base(model_path)
    vocab = model.get_input_embeddings().num_embeddings
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    for row in dataset:
        top = max(max(row["prompt_ids"]), max(row["completion_ids"]))
        if top >= vocab:
            raise MalformedExampleError(
                f"example {row['example_id']} has token id {top}, outside this model's vocabulary of {vocab}: it "
                f"was sampled with another tokenizer than {model_path}'s"
            )
        length = len(row["prompt_ids"]) + len(row["completion_ids"])
        if context is not None and length > context:
            raise MalformedExampleError(
                f"example {row['example_id']} is {length} tokens long, more than {model_path}'s context of {context}"
            )
    # With LoRA over an adapter parent, the parent's adapter is continued; TRL keeps a frozen copy as the reference.
    model = common.apply_parent_adapter(model, adapter_path, lora=cfg.lora is not None)
    # Full fine-tuning: the reference is the parent as loaded (merged or not), not whatever the config names.
    ref_model = copy.deepcopy(model).eval() if cfg.lora is None and cfg.beta > 0 else None
    batch_size = min(cfg.batch_size, n)
    grad_accum = max(1, min(cfg.grad_accum, n // batch_size))
    args = common.training_args(
        pg_config,
        cfg,
        out,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        num_iterations=cfg.iterations,
        epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high,
        beta=cfg.beta,
        loss_type=cfg.loss_type,
        temperature=cfg.temperature,
        optim=cfg.optimizer,
        max_grad_norm=cfg.max_grad_norm,
        # The stored log-probs came from inference (no dropout): dropout in training would skew every ratio.
        disable_dropout=True,
    )
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=common.new_adapter_config(cfg.lora, adapter_path),
        ref_model=ref_model,
    )
    result = common.train(trainer, hooks)
    # TRL's figures, averaged over the logged windows (the last window is logged with the run's summary).
    metrics: dict[str, Any] = {"batch_size": batch_size, "grad_accum": grad_accum}
    for key in ("kl", "entropy", "clip_ratio/region_mean", "advantage/mean", "frac_advantage_zero"):
        values = [h[key] for h in trainer.state.log_history if h.get(key) is not None]
        if values:
            metrics[key.replace("/", "_")] = sum(values) / len(values)
    return common.save_outcome(
        trainer.model,
        tokenizer,
        result,
        cfg=cfg,
        out=out,
        model_path=model_path,
        examples=n,
        started=started,
        metrics=metrics,
        log_history=trainer.state.log_history,
    )


def _train(req: TrainRequest) -> TrainOutcome:
    return run_pg(
        req.dataset,
        model_path=req.parent.path,
        adapter_path=req.parent.adapter_path,
        output_dir=req.output_dir,
        settings=req.settings,
        hooks=req.hooks,
    )


PG = register_trainer(
    TrainerKind(
        name="pg",
        settings=PGSettings,
        example_kinds=PG_KINDS,
        train=_train,
        build_dataset=build_dataset,
        description="Policy gradient on stored advantages (TRL GRPOTrainer's clipped loss and KL, fed stored "
        "actions): one example per action with its prompt/completion token ids, sampling log-probs and advantage, "
        "as self-correction and self-play loops emit them.",
    )
)
