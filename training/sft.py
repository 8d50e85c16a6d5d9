"""Supervised fine-tuning over TRL's `SFTTrainer`, with defaults that are safe on a CPU-only machine.

The job trains from a model version (a full model folder, or a base folder plus a LoRA adapter) and writes a
new one. With LoRA and a parent that is itself an adapter, training continues the parent's adapter, so every
candidate stays one small adapter over the same base instead of a stack of merges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from strop.memory.records import ExampleKind, ExampleRecord
from strop.training import common
from strop.training.tracking import ReportTo, TrainHooks
from strop.training.trainers import TrainerKind, TrainOutcome, TrainRequest, register_trainer


class LoraSettings(BaseModel):
    """LoRA through PEFT."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (effective scale alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: str | list[str] = Field(
        "all-linear",
        description="Modules to adapt: 'all-linear' or a list of module names (e.g. ['q_proj', 'v_proj']).",
    )


class SFTSettings(BaseModel):
    """Training hyper-parameters; they map onto TRL's `SFTConfig`."""

    model_config = ConfigDict(extra="forbid")

    epochs: float = Field(2.0, gt=0, description="Passes over the claimed examples.")
    learning_rate: float = Field(
        2e-4, gt=0, description="Peak learning rate (LoRA wants ~1e-4..5e-4, full fine-tuning ~1e-5)."
    )
    batch_size: int = Field(8, ge=1, description="Examples per device step.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    max_length: int = Field(256, ge=8, description="Longest tokenized example; longer ones are truncated.")
    lr_scheduler: str = Field(
        "linear", description="Transformers scheduler name: linear, cosine, constant..."
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    seed: int = Field(0, description="Seed for shuffling and adapter initialisation.")
    lora: LoraSettings | None = Field(
        default_factory=LoraSettings, description="LoRA settings; omit (or none) for full fine-tuning."
    )
    merge: bool = Field(
        False, description="Merge the adapter into the weights and save a full model (else keep the adapter)."
    )
    bf16: bool | None = Field(
        None, description="bf16 mixed precision; None means only when a CUDA GPU is present."
    )
    report_to: ReportTo
    logging_steps: int = Field(5, ge=1, description="Log the loss every this many steps.")
    max_examples: int | None = Field(
        None,
        ge=1,
        description="Claim at most this many examples per job (oldest first); the rest wait for the next job.",
    )


def run_sft(
    dataset: Any,
    *,
    model_path: str | Path,
    output_dir: str | Path,
    settings: SFTSettings | None = None,
    adapter_path: str | Path | None = None,
    hooks: TrainHooks | None = None,
) -> TrainOutcome:
    """Fine-tune on a TRL conversational prompt/completion dataset and save the result in `output_dir`."""
    from trl import SFTConfig, SFTTrainer

    cfg = settings or SFTSettings()
    out, started = common.start_run(output_dir)
    tokenizer = common.load_tokenizer(model_path)
    model = common.load_parent(model_path, adapter_path, lora=cfg.lora is not None)
    args = common.training_args(SFTConfig, cfg, out, weight_decay=cfg.weight_decay, max_length=cfg.max_length)
    trainer = SFTTrainer(
        model=model,
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
        log_history=trainer.state.log_history,
    )


def _build_dataset(examples: list[ExampleRecord], settings: SFTSettings) -> Any:
    from strop.memory import to_dataset

    return to_dataset(examples, ExampleKind.SFT)


def _train(req: TrainRequest) -> TrainOutcome:
    return run_sft(
        req.dataset,
        model_path=req.parent.path,
        adapter_path=req.parent.adapter_path,
        output_dir=req.output_dir,
        settings=req.settings,
        hooks=req.hooks,
    )


SFT = register_trainer(
    TrainerKind(
        name="sft",
        settings=SFTSettings,
        example_kinds=(ExampleKind.SFT,),
        train=_train,
        build_dataset=_build_dataset,
        description="Supervised fine-tuning (TRL SFTTrainer) on prompt/completion examples, e.g. best-of-N's correct answers.",
    )
)
