"""The 'tiny' model: a byte-level tokenizer and a small Llama pre-trained from scratch on arithmetic.

Tests and demos need a real model that loads in a second, answers in the task format, and is *partly*
right, so a self-improvement cycle has something to improve: we stop pre-training once a validation slice
of the train split reaches `target_accuracy` (about 40%), not when it has learned everything.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, model_validator

from strop.agents.models.cache import (
    TINY,
    ModelMeta,
    cache_lock,
    missing_parts,
    model_cache_dir,
    now_iso,
    staging_dir,
    write_meta,
)

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from strop.sandbox.tasks.base import Task, TaskSet

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>"]

# Each turn is '<|role|>\n' + content; an assistant turn ends with eos. The {% generation %} markers let
# TRL's assistant_only_loss find the assistant tokens; prompt/completion datasets do not need them.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{%- else -%}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)


class TinyBuildConfig(BaseModel):
    """How the tiny model is shaped and pre-trained. Defaults: 42% held-out in ~75 s of one CPU core (seed 0)."""

    seed: int = Field(0, description="Seeds weights, data order and sampling of the training problems.")
    max_steps: int = Field(2000, ge=1, description="Upper bound on optimizer steps.")
    max_seconds: float = Field(
        600.0,
        gt=0,
        description="Wall-clock safety budget. The target accuracy normally stops training first (~80 s on an "
        "idle CPU); a busy shared CPU can take 3x longer, and stopping early would leave a useless model.",
    )
    target_accuracy: float = Field(
        0.35,
        ge=0.0,
        le=1.0,
        description="Stop once greedy accuracy on the validation slice reaches this: leaves room to improve.",
    )
    eval_every: int = Field(25, ge=1, description="Steps between validation checks while accuracy is low.")
    eval_every_near_target: int = Field(
        10,
        ge=1,
        description="Steps between checks once validation accuracy passes a quarter of the target: accuracy "
        "jumps from ~10% to ~85% within ~100 steps, so coarse checks would overshoot.",
    )
    threads: int | None = Field(
        1,
        ge=1,
        description="torch CPU threads during the build (None: torch's default). One thread keeps the result "
        "independent of the machine and is several times faster than two on a shared, busy CPU.",
    )
    validation_size: int = Field(
        200, ge=10, description="Train-split problems held back from training for the stop rule."
    )
    heldout_size: int = Field(
        400, ge=10, description="Held-out problems for the accuracy recorded in meta.json."
    )
    batch_size: int = Field(64, ge=1, description="Sequences per optimizer step.")
    learning_rate: float = Field(2e-3, gt=0, description="AdamW peak learning rate (after warmup).")
    warmup_steps: int = Field(50, ge=0, description="Linear warmup steps.")
    # ~0.46M parameters: a 1.8M model costs 3.5x more per step and does not fit the one-minute budget.
    hidden_size: int = Field(128, ge=16, description="Model width.")
    num_layers: int = Field(2, ge=1, description="Transformer blocks.")
    num_heads: int = Field(4, ge=1, description="Attention heads (hidden_size must divide by it).")
    intermediate_size: int = Field(384, ge=16, description="MLP width.")
    max_position_embeddings: int = Field(
        1024, ge=64, description="Context length (RoPE, so no parameter cost)."
    )
    bpe_vocab_size: int = Field(
        384, ge=280, description="BPE vocabulary incl. the 256 byte symbols and specials."
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TinyBuildConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}"
            )
        return self


def _training_texts(cfg: TinyBuildConfig) -> tuple[list[tuple[str, str]], list[Task]]:
    """(prompt, answer) pairs for training, and the validation tasks kept out of them.

    Mostly the target task (two-digit addition), plus one-digit addition and two-digit subtraction so the
    model is not a single-template lookup table.
    """
    from strop.sandbox.tasks.arithmetic import ArithmeticTaskSet

    target = ArithmeticTaskSet(digits=2, ops=("+",), seed=cfg.seed).tasks("train", n=5000)
    extra = [
        *ArithmeticTaskSet(digits=1, ops=("+",), seed=cfg.seed).tasks("train", n=70),
        *ArithmeticTaskSet(digits=2, ops=("-",), seed=cfg.seed).tasks("train", n=1000),
    ]
    validation, train = target[: cfg.validation_size], target[cfg.validation_size :]
    pairs = [(t.prompt, t.reference_solution) for t in [*train, *extra]]
    random.Random(cfg.seed).shuffle(pairs)
    return pairs, validation


def build_tokenizer(
    corpus: Sequence[str], vocab_size: int, max_length: int = 1024
) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any text encodes) whose digits are always single tokens, so carries are learnable."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
        model_max_length=max_length,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _build_model(cfg: TinyBuildConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    # Llama, not Qwen2: Qwen2's config pins its own tokenizer class, which breaks a custom tokenizer on load.
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_theta=10000.0,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _encode(tokenizer: PreTrainedTokenizerFast, pairs: list[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """Token ids of each full conversation and where the assistant's part starts (loss is taken after it)."""
    out = []
    for prompt, answer in pairs:
        user = [{"role": "user", "content": prompt}]
        prefix = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": answer}], tokenize=False
        )
        if not full.startswith(prefix):
            raise RuntimeError(
                "tiny chat template: the generation prompt is not a prefix of the full conversation"
            )
        prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        out.append((full_ids, len(prefix_ids)))
    return out


def accuracy(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[Task],
    task_set: TaskSet,
    batch_size: int = 256,
    max_new_tokens: int = 32,
) -> float:
    """Greedy accuracy on tasks, verified by the task set (the same check loops and evaluation use)."""
    import torch

    if not tasks:
        raise ValueError("accuracy() needs at least one task")
    was_training = model.training
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # batched generation needs left padding
    correct = 0
    try:
        for i in range(0, len(tasks), batch_size):
            chunk = tasks[i : i + batch_size]
            prompts = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": t.prompt}], add_generation_prompt=True, tokenize=False
                )
                for t in chunk
            ]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            correct += sum(task_set.verify(t, text).correct for t, text in zip(chunk, texts, strict=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return correct / len(tasks)


def _pretrain(
    cfg: TinyBuildConfig,
    model: Any,
    tokenizer: Any,
    data: list[tuple[list[int], int]],
    validation: list[Task],
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Next-token pre-training on the assistant parts, stopping at the target accuracy or the budget.

    A plain PyTorch loop rather than transformers.Trainer: this is from-scratch pre-training on a few
    thousand short synthetic sequences, and the stop rule (greedy validation accuracy, time budget) would
    otherwise need a custom callback plus an evaluation loop; the loop is shorter and starts faster.
    """
    import torch

    from strop.sandbox.tasks.arithmetic import ArithmeticTaskSet

    task_set = ArithmeticTaskSet(digits=2, ops=("+",), seed=cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup_steps, 1)))
    pad = tokenizer.pad_token_id
    model.train()
    start, cpu_start = time.monotonic(), time.process_time()
    step, val_acc, loss_value, order, cursor = 0, 0.0, math.nan, torch.randperm(len(data), generator=gen), 0
    stopped = "max_steps"
    while step < cfg.max_steps:
        if cursor + cfg.batch_size > len(data):
            order, cursor = torch.randperm(len(data), generator=gen), 0
        batch = [data[j] for j in order[cursor : cursor + cfg.batch_size].tolist()]
        cursor += cfg.batch_size
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, start_at) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, start_at : len(ids)] = torch.tensor(ids[start_at:])
            mask[row, : len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        loss_value = loss.item()
        elapsed = time.monotonic() - start
        every = cfg.eval_every_near_target if val_acc >= cfg.target_accuracy / 4 else cfg.eval_every
        if step % every == 0:
            val_acc = accuracy(model, tokenizer, validation, task_set)
            progress(
                f"step {step:5d}  loss {loss_value:.3f}  validation accuracy {val_acc:.1%}  {elapsed:.0f} s "
                f"(cpu {time.process_time() - cpu_start:.0f} s)"
            )
            if val_acc >= cfg.target_accuracy:
                stopped = "target_accuracy"
                break
        if elapsed > cfg.max_seconds:
            stopped = "max_seconds"
            break
    return {
        "train_steps": step,
        "train_seconds": round(time.monotonic() - start, 1),
        "final_loss": round(loss_value, 4),
        "validation_accuracy": val_acc,
        "stopped_by": stopped,
    }


def build_tiny(
    config: TinyBuildConfig | None = None,
    *,
    seconds: float | None = None,
    seed: int | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Create the 'tiny' cache entry once (under a file lock) and return its folder.

    `seconds` and `seed` override the config's budget and seed for quick calls.
    """
    cfg = config or TinyBuildConfig()
    if seconds is not None:
        cfg = cfg.model_copy(update={"max_seconds": seconds})
    if seed is not None:
        cfg = cfg.model_copy(update={"seed": seed})
    say = progress or log.info
    final = model_cache_dir() / TINY
    if not force and final.is_dir() and not missing_parts(final):
        return final
    with cache_lock(TINY):
        if not force and final.is_dir() and not missing_parts(final):
            return final
        import torch

        threads = torch.get_num_threads()
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        try:
            _build_into_cache(cfg, say)
        finally:
            torch.set_num_threads(threads)
    return final


def _build_into_cache(cfg: TinyBuildConfig, say: Callable[[str], None]) -> None:
    import torch

    from strop.sandbox.tasks.arithmetic import ArithmeticTaskSet

    torch.manual_seed(cfg.seed)
    pairs, validation = _training_texts(cfg)
    tokenizer = build_tokenizer(
        [f"{p}\n{a}" for p, a in pairs], cfg.bpe_vocab_size, cfg.max_position_embeddings
    )
    model = _build_model(cfg, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    say(
        f"pre-training tiny ({n_params:,} parameters) on {len(pairs)} arithmetic problems, "
        f"until {cfg.target_accuracy:.0%} validation accuracy or {cfg.max_steps} steps or {cfg.max_seconds:.0f} s"
    )
    stats = _pretrain(cfg, model, tokenizer, _encode(tokenizer, pairs), validation, say)
    task_set = ArithmeticTaskSet(digits=2, ops=("+",), seed=cfg.seed)
    heldout = task_set.tasks("heldout", n=cfg.heldout_size)
    heldout_acc = accuracy(model, tokenizer, heldout, task_set)
    say(f"held-out accuracy {heldout_acc:.1%} on {len(heldout)} two-digit additions")
    with staging_dir(TINY) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_meta(
            tmp,
            ModelMeta(
                name=TINY,
                source="built from scratch (strop models build-tiny)",
                created=now_iso(),
                parameters=n_params,
                extra={
                    "heldout_accuracy": heldout_acc,
                    "heldout_n": len(heldout),
                    "heldout_task": "arithmetic digits=2 +",
                    "seed": cfg.seed,
                    **stats,
                    "config": cfg.model_dump(),
                },
            ),
        )
