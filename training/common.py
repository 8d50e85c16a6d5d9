"""The TRL set-up the four trainer kinds (sft, dpo, pg, grpo) share, so it is written and fixed in one place.

Every kind trains a model version (a full model folder, or a base folder plus a LoRA adapter) into a new one
with CPU-safe defaults; what differs between them (DPO's and PG's reference model, GRPO's rollouts, PG's
dropout and batch capping, each algorithm's own config fields) stays in the kind's module. Heavy imports
(torch, transformers, peft, datasets) happen inside the functions so importing a kind stays cheap.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from strop.training.trainers import TrainOutcome

if TYPE_CHECKING:
    from strop.training.settings import LoraSettings, TrainerSettings
    from strop.training.tracking import TrainHooks


def start_run(output_dir: str | Path) -> tuple[Path, float]:
    """Begin a training run: the output folder (created), and the `time.monotonic()` the run's seconds count from.

    It also silences what every TRL run prints and nobody can act on: the datasets progress bars (a few hundred
    rows, noise in the evolve log), transformers' "Loading weights" bars, and the FutureWarning TRL 1.16 raises
    on every run for transformers 5's deprecated gradient-checkpointing names. The run's own progress is one
    rich bar (training.callbacks).
    """
    import warnings

    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
    started = time.monotonic()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out, started


def load_tokenizer(model_path: str | Path) -> Any:
    """The parent's tokenizer, padding with EOS when it has no pad token (TRL's collators need one)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base(model_path: str | Path) -> Any:
    """The model folder in float32: training (and CPU training above all) must not run in a half-precision copy;
    mixed precision, where wanted, is the trainer's `bf16`."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)


def apply_parent_adapter(
    model: Any, adapter_path: str | Path | None, *, lora: bool, frozen: bool = False
) -> Any:
    """`model` with the parent's adapter, if the parent is one.

    With LoRA the parent's adapter is continued (trainable), so every candidate stays one small adapter over the
    same base instead of a stack of merges. Without LoRA the adapter is merged into the weights and every weight
    is made trainable, since PEFT loads them frozen; `frozen` (a reference model) keeps them all frozen instead.
    """
    if adapter_path is None:
        return model
    from peft import PeftModel

    if lora and not frozen:
        return PeftModel.from_pretrained(model, str(adapter_path), is_trainable=True)
    merged = PeftModel.from_pretrained(model, str(adapter_path)).merge_and_unload()
    return merged.requires_grad_(not frozen)


def load_parent(
    model_path: str | Path, adapter_path: str | Path | None, *, lora: bool, frozen: bool = False
) -> Any:
    """`load_base` then `apply_parent_adapter`: the parent version, ready to train (or frozen, as a reference)."""
    return apply_parent_adapter(load_base(model_path), adapter_path, lora=lora, frozen=frozen)


def new_adapter_config(lora: LoraSettings | None, adapter_path: str | Path | None) -> Any:
    """The PEFT `LoraConfig` TRL should wrap the model in: None for full fine-tuning, and None when the parent's
    own adapter is continued (its settings, not these, then apply)."""
    if lora is None or adapter_path is not None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


def no_activation_checkpointing(config_cls: type) -> dict[str, bool]:
    """Checkpointing off under the name this transformers knows: `activation_checkpointing` since 5.2x, where
    `gradient_checkpointing` became a deprecated alias (pyproject pins >= 5.23); only the old name before. TRL
    turns it on by default; a small model only loses speed with it."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(config_cls)}
    return (
        {"activation_checkpointing": False}
        if "activation_checkpointing" in names
        else {"gradient_checkpointing": False}
    )


def training_args(config_cls: type, cfg: TrainerSettings, out: Path, **kind_args: Any) -> Any:
    """`config_cls` (a TRL config) with the keywords every kind sets alike, safe on a CPU-only machine: bf16 only
    where a CUDA GPU supports it (unless the settings say), never fp16, no checkpointing, no saving mid-run (a job
    saves its result itself), no pinned memory or progress bars without a GPU/terminal to use them.
    `kind_args` add the kind's own fields and override any of these (pg caps the batch to the examples)."""
    import torch

    cuda = torch.cuda.is_available()
    common: dict[str, Any] = dict(
        output_dir=str(out / "trainer"),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        bf16=cfg.bf16 if cfg.bf16 is not None else (cuda and torch.cuda.is_bf16_supported()),
        fp16=False,
        use_cpu=not cuda,
        **no_activation_checkpointing(config_cls),
        report_to=cfg.report_to or "none",
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        dataloader_pin_memory=cuda,
        disable_tqdm=True,
    )
    return config_cls(**{**common, **kind_args})


def train(trainer: Any, hooks: TrainHooks | None) -> Any:
    """`trainer.train()` with a rich progress bar instead of printed metric dicts (unless `hooks.progress` is
    off), and strop's metrics in `hooks` logged to the trainer's trackers at the end (training.callbacks)."""
    from strop.training.callbacks import run_trainer

    return run_trainer(trainer, hooks)


def is_main_process() -> bool:
    """False only in a launched training process other than rank 0 (`training.launch`): files a job writes once
    (the model, the outcome) are written by rank 0 alone, not raced over by every data-parallel copy."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def drop_reference_adapter(trained: Any) -> None:
    """Delete the "ref" adapter TRL adds beside a continued one: with LoRA over a parent that is itself an
    adapter, DPO and GRPO (pg included; beta > 0) keep a frozen copy of the parent's adapter under that name as
    the reference. It is not part of the new version: PEFT would save it into the candidate as a `ref/` folder."""
    if "ref" in getattr(trained, "peft_config", {}):
        trained.delete_adapter("ref")


def save_outcome(
    trained: Any,
    tokenizer: Any,
    result: Any,
    *,
    cfg: TrainerSettings,
    out: Path,
    model_path: str | Path,
    examples: int,
    started: float,
    metrics: dict[str, Any] | None = None,
    log_history: list[dict[str, Any]] | None = None,
) -> TrainOutcome:
    """Save the trained model into `out` and describe it: with LoRA and no `merge`, only the adapter (the new
    version is the parent's base plus it); otherwise the merged weights with the tokenizer, a full model folder.
    `result` is TRL's `TrainOutput`; `started` the `time.monotonic()` the run began at; `log_history` the
    trainer's `state.log_history`, kept (numbers only) for the job's loss and reward curves."""
    from strop.training.tracking import compact_history

    drop_reference_adapter(trained)
    adapter_out: str | None = None
    save = (
        is_main_process()
    )  # under `accelerate launch` every rank holds the same weights: rank 0 writes them
    if cfg.lora is not None and not cfg.merge:
        if save:
            trained.save_pretrained(str(out))
        adapter_out, path_out = str(out), str(model_path)
    else:
        if save:
            if hasattr(trained, "merge_and_unload"):
                trained = trained.merge_and_unload()
            trained.save_pretrained(str(out))
            tokenizer.save_pretrained(str(out))
        path_out = str(out)
    return TrainOutcome(
        path=path_out,
        adapter_path=adapter_out,
        train_loss=float(result.training_loss),
        steps=int(result.global_step),
        examples=examples,
        seconds=time.monotonic() - started,
        metrics=metrics or {},
        log_history=compact_history(log_history or []),
    )
