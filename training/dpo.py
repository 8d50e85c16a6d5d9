"""Direct preference optimisation over TRL's `DPOTrainer`, with defaults that are safe on a CPU-only machine.

Data: PAIR examples in TRL's conversational format, `{"prompt": [messages], "chosen": [assistant message],
"rejected": [assistant message]}` (best-of-N's `emit_pairs`, or `training.pairs.derive_pairs` over runs
recorded without it).

The reference model is the parent version, as DPO wants:
- LoRA over a full parent: TRL computes the reference with the adapter disabled, which is the parent.
- LoRA over a parent that is itself an adapter: training continues the parent's adapter (every candidate
  stays one adapter over the same base, as with SFT) and TRL keeps a frozen copy of it as the reference.
- Full fine-tuning: a second, frozen copy of the parent (merged, if the parent is an adapter).

Each job records a balance report of its pairs (pairs per task, chosen vs rejected token lengths) and TRL's
reward figures (margins, accuracies) in the job's metrics.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from strop.memory.records import ExampleKind, ExampleRecord
from strop.training import common
from strop.training.settings import LearningRate, MaxLength, OfflineTrainerSettings
from strop.training.tracking import TrainHooks
from strop.training.trainers import TrainerKind, TrainOutcome, TrainRequest, register_trainer

log = logging.getLogger(__name__)

# The losses TRL 1.16's DPOTrainer implements (`DPOConfig.loss_type`; anything else fails at its first step).
# tests/training/test_dpo.py checks this list against the installed TRL source.
DPO_LOSS_TYPES: tuple[str, ...] = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)

# TRL's logged figures that a job keeps (the last logged value), under the job-metric names.
_REWARD_KEYS = {
    "rewards/margins": "reward_margin",
    "rewards/accuracies": "reward_accuracy",
    "rewards/chosen": "reward_chosen",
    "rewards/rejected": "reward_rejected",
}


class DPOSettings(OfflineTrainerSettings):
    """DPO hyper-parameters (the shared ones in `training.settings`); they map onto TRL's `DPOConfig`."""

    beta: float = Field(
        0.1,
        gt=0,
        description="KL strength toward the reference (the parent): higher keeps the model closer to it "
        "(for loss_type 'ipo', the regularisation tau).",
    )
    loss_type: str | list[str] = Field(
        "sigmoid", description=f"DPO loss, or a list of losses summed: one of {', '.join(DPO_LOSS_TYPES)}."
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Assumed share of flipped preference labels ('robust' needs < 0.5; 'exo_pair' "
        "needs > 0, e.g. 1e-3).",
    )
    learning_rate: LearningRate = 5e-5
    max_length: MaxLength = 256
    balance_by: str | None = Field(
        None,
        description="A key of the pairs' `metadata` whose values get equal numbers of pairs: larger groups are "
        "subsampled (seeded) to the smallest; the pairs left out are still consumed. E.g. 'target' for SPC's critic "
        "pairs, so that accepting correct steps and rejecting sneaky ones weigh the same and DPO does not learn the "
        "class prior instead of the step.",
    )

    @field_validator("loss_type")
    @classmethod
    def _known_loss(cls, value: str | list[str]) -> str | list[str]:
        losses = [value] if isinstance(value, str) else value
        bad = [x for x in losses if x not in DPO_LOSS_TYPES]
        if not losses or bad:
            raise ValueError(
                f"unknown DPO loss_type {bad or value!r}; TRL 1.16 knows: {', '.join(DPO_LOSS_TYPES)}"
            )
        return value

    @model_validator(mode="after")
    def _smoothing_fits_loss(self) -> DPOSettings:
        if "robust" in self.losses and self.label_smoothing >= 0.5:
            raise ValueError(f"loss_type 'robust' needs label_smoothing < 0.5, got {self.label_smoothing}")
        if "exo_pair" in self.losses and self.label_smoothing == 0:
            raise ValueError("loss_type 'exo_pair' needs label_smoothing > 0 (the paper uses 1e-3)")
        return self

    @property
    def losses(self) -> list[str]:
        return [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)


def _reward_figures(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """TRL's reward figures at the last logged step, and the margin at the first one (with logging_steps=1 that
    is before any update, where it is 0: the reference is the parent)."""
    logged = [h for h in log_history if "rewards/margins" in h]
    out: dict[str, float] = {}
    if logged:
        for key, name in _REWARD_KEYS.items():
            if key in logged[-1]:
                out[name] = float(logged[-1][key])
        out["reward_margin_first"] = float(logged[0]["rewards/margins"])
    return out


def run_dpo(
    dataset: Any,
    *,
    model_path: str | Path,
    output_dir: str | Path,
    settings: DPOSettings | None = None,
    adapter_path: str | Path | None = None,
    hooks: TrainHooks | None = None,
) -> TrainOutcome:
    """DPO on a TRL conversational prompt/chosen/rejected dataset; the result is saved in `output_dir`."""
    from trl import DPOConfig, DPOTrainer

    cfg = settings or DPOSettings()
    out, started = common.start_run(output_dir)
    tokenizer = common.load_tokenizer(model_path)
    # With LoRA over an adapter parent, the parent's adapter is continued and TRL copies it as the reference.
    model = common.load_parent(model_path, adapter_path, lora=cfg.lora is not None)
    ref_model = None
    if (
        cfg.lora is None
    ):  # full fine-tuning: an explicit frozen parent (TRL would reload the base, not a merged adapter)
        ref_model = common.load_parent(model_path, adapter_path, lora=False, frozen=True)
    args = common.training_args(
        DPOConfig,
        cfg,
        out,
        beta=cfg.beta,
        loss_type=cfg.losses,
        label_smoothing=cfg.label_smoothing,
        max_length=cfg.max_length,
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=common.new_adapter_config(cfg.lora, adapter_path),
    )
    result = common.train(trainer, hooks)
    return common.save_outcome(
        trainer.model,
        tokenizer,
        result,
        cfg=cfg,
        out=out,
        model_path=model_path,
        examples=len(dataset),
        started=started,
        metrics=_reward_figures(trainer.state.log_history),
        log_history=trainer.state.log_history,
    )


def _build_dataset(examples: list[ExampleRecord], settings: DPOSettings) -> Any:
    from strop.memory import to_dataset

    if settings.balance_by is not None:
        examples = balanced(examples, settings.balance_by, seed=settings.seed)
    return to_dataset(examples, ExampleKind.PAIR)


def balanced(examples: list[ExampleRecord], key: str, *, seed: int = 0) -> list[ExampleRecord]:
    """Equal numbers of pairs per value of `metadata[key]` (a missing key is a value of its own), in claim order.

    Why: when one class of pairs outnumbers the other (more "Yes over No" pairs than "No over Yes"), DPO on a
    one-token answer can learn the answer's prior from the mix instead of the judgement.
    """
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(str((ex.payload.get("metadata") or {}).get(key)), []).append(i)
    if len(groups) < 2:
        log.warning(
            "balance_by %r: the %d pairs have one value (%s); nothing to balance",
            key,
            len(examples),
            next(iter(groups), "none"),
        )
        return examples
    n = min(len(ix) for ix in groups.values())
    rng = random.Random(seed)
    keep = sorted(i for ix in groups.values() for i in (ix if len(ix) == n else rng.sample(ix, n)))
    log.info("balance_by %r: %s -> %d pairs each", key, {g: len(ix) for g, ix in sorted(groups.items())}, n)
    return [examples[i] for i in keep]


def pair_balance(examples: list[ExampleRecord], model_path: str | Path | None = None) -> dict[str, Any]:
    """`training.pairs.balance_report` with token counts from the model's tokenizer (words without one)."""
    from strop.training.pairs import balance_report

    count = None
    if model_path is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_path))

        def count(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return balance_report(examples, count)


def _train(req: TrainRequest) -> TrainOutcome:
    from strop.training.pairs import format_balance

    balance = pair_balance(req.examples, req.parent.path)
    log.info("DPO job %s: %s", req.job_id[:8], format_balance(balance))
    outcome = run_dpo(
        req.dataset,
        model_path=req.parent.path,
        adapter_path=req.parent.adapter_path,
        output_dir=req.output_dir,
        settings=req.settings,
        hooks=req.hooks,
    )
    outcome.metrics = {"balance": balance, **outcome.metrics}
    return outcome


DPO = register_trainer(
    TrainerKind(
        name="dpo",
        settings=DPOSettings,
        example_kinds=(ExampleKind.PAIR,),
        train=_train,
        build_dataset=_build_dataset,
        description="Direct preference optimisation (TRL DPOTrainer) on prompt/chosen/rejected pairs, e.g. best-of-N's "
        "correct answers over its incorrect ones; the parent version is the reference.",
    )
)
