"""Supervised fine-tuning over TRL's `SFTTrainer`, with defaults that are safe on a CPU-only machine.

The job trains from a model version (a full model folder, or a base folder plus a LoRA adapter) and writes a
new one. With LoRA and a parent that is itself an adapter, training continues the parent's adapter, so every
candidate stays one small adapter over the same base instead of a stack of merges.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from strop.memory.records import ExampleKind, ExampleRecord
from strop.training.trainers import TrainerKind, TrainOutcome, TrainRequest, register_trainer


class LoraSettings(BaseModel):
    """LoRA through PEFT."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (effective scale alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules to adapt: 'all-linear' or a list of module names (e.g. ['q_proj', 'v_proj'])."
    )


class SFTSettings(BaseModel):
    """Training hyper-parameters; they map onto TRL's `SFTConfig`."""

    model_config = ConfigDict(extra="forbid")

    epochs: float = Field(2.0, gt=0, description="Passes over the claimed examples.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate (LoRA wants ~1e-4..5e-4, full fine-tuning ~1e-5).")
    batch_size: int = Field(8, ge=1, description="Examples per device step.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    max_length: int = Field(256, ge=8, description="Longest tokenized example; longer ones are truncated.")
    lr_scheduler: str = Field("linear", description="Transformers scheduler name: linear, cosine, constant...")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    seed: int = Field(0, description="Seed for shuffling and adapter initialisation.")
    lora: LoraSettings | None = Field(default_factory=LoraSettings, description="LoRA settings; omit (or none) for full fine-tuning.")
    merge: bool = Field(False, description="Merge the adapter into the weights and save a full model (else keep the adapter).")
    bf16: bool | None = Field(None, description="bf16 mixed precision; None means only when a CUDA GPU is present.")
    report_to: list[str] = Field(default_factory=list, description="Trackers (e.g. ['wandb']); empty reports nowhere.")
    logging_steps: int = Field(5, ge=1, description="Log the loss every this many steps.")
    max_examples: int | None = Field(
        None, ge=1, description="Claim at most this many examples per job (oldest first); the rest wait for the next job."
    )



def run_sft(
    dataset: Any, *, model_path: str | Path, output_dir: str | Path, settings: SFTSettings | None = None,
    adapter_path: str | Path | None = None,
) -> TrainOutcome:
    """Fine-tune on a TRL conversational prompt/completion dataset and save the result in `output_dir`."""
    import warnings

    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()  # a few hundred rows: the bars are noise in the evolve log
    # TRL 1.16 calls transformers 5's deprecated gradient-checkpointing names on every run; nothing we can fix.
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)

    cfg = settings or SFTSettings()
    started = time.monotonic()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    peft_config = None
    if adapter_path is not None:
        from peft import PeftModel

        if cfg.lora is not None:  # continue the parent's adapter: the result is still one adapter over the base
            model = PeftModel.from_pretrained(model, str(adapter_path), is_trainable=True)
        else:  # full fine-tuning starts from the merged parent
            model = PeftModel.from_pretrained(model, str(adapter_path)).merge_and_unload()
            model.requires_grad_(True)  # PEFT loads the parent frozen; merged, every weight trains
    elif cfg.lora is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM",
        )
    bf16 = cfg.bf16 if cfg.bf16 is not None else (cuda and torch.cuda.is_bf16_supported())
    args = SFTConfig(
        output_dir=str(out / "trainer"),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
        weight_decay=cfg.weight_decay,
        max_length=cfg.max_length,
        seed=cfg.seed,
        bf16=bf16,
        fp16=False,
        use_cpu=not cuda,
        # TRL turns this on by default; on a small model it only trades speed for memory we do not need.
        activation_checkpointing=False,
        report_to=cfg.report_to or "none",
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        dataloader_pin_memory=cuda,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config,
    )
    result = trainer.train()
    trained = trainer.model
    adapter_out: str | None = None
    if cfg.lora is not None and not cfg.merge:
        trained.save_pretrained(str(out))
        adapter_out, path_out = str(out), str(model_path)
    else:
        if hasattr(trained, "merge_and_unload"):
            trained = trained.merge_and_unload()
        trained.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        path_out = str(out)
    return TrainOutcome(
        path=path_out, adapter_path=adapter_out, train_loss=float(result.training_loss),
        steps=int(result.global_step), examples=len(dataset), seconds=time.monotonic() - started,
    )


def _build_dataset(examples: list[ExampleRecord], settings: SFTSettings) -> Any:
    from strop.memory import to_dataset

    return to_dataset(examples, ExampleKind.SFT)


def _train(req: TrainRequest) -> TrainOutcome:
    return run_sft(req.dataset, model_path=req.parent.path, adapter_path=req.parent.adapter_path,
                   output_dir=req.output_dir, settings=req.settings)


SFT = register_trainer(TrainerKind(
    name="sft", settings=SFTSettings, example_kinds=(ExampleKind.SFT,), train=_train, build_dataset=_build_dataset,
    description="Supervised fine-tuning (TRL SFTTrainer) on prompt/completion examples, e.g. best-of-N's correct answers.",
))
