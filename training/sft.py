"""Supervised fine-tuning over TRL's `SFTTrainer`, with defaults that are safe on a CPU-only machine.

The job trains from a model version (a full model folder, or a base folder plus a LoRA adapter) and writes a
new one. With LoRA and a parent that is itself an adapter, training continues the parent's adapter, so every
candidate stays one small adapter over the same base instead of a stack of merges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from strop.memory.records import ExampleKind, ExampleRecord
from strop.training import common
from strop.training.settings import Epochs, LearningRate, MaxLength, OfflineTrainerSettings
from strop.training.tracking import TrainHooks
from strop.training.trainers import TrainerKind, TrainOutcome, TrainRequest, register_trainer


class SFTSettings(OfflineTrainerSettings):
    """SFT hyper-parameters (the shared ones in `training.settings`); they map onto TRL's `SFTConfig`."""

    epochs: Epochs = 2.0
    learning_rate: LearningRate = 2e-4
    max_length: MaxLength = 256


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
    args = common.training_args(SFTConfig, cfg, out, max_length=cfg.max_length)
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
