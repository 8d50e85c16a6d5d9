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

How TRL is used: `StoredActionTrainer` subclasses TRL's `GRPOTrainer` and replaces only where a batch comes
from. `GRPOTrainer._generate_and_score_completions` normally samples completions and turns rewards into
group-relative advantages; here it pads the stored prompt/completion ids, hands the stored sampling log-probs
over as `old_per_token_logps` and the stored advantages as `advantages`, and (beta > 0) computes the
reference log-probs exactly as TRL does. Everything after that is TRL's own: the clipped loss and its
normalisation (`loss_type`), the KL term, entropy and clip-ratio metrics, gradient accumulation, the
optimizer, `num_iterations` (several passes over one batch, which is where the clip bites) and LoRA. Two
GRPO-specific rules do not apply to stored actions and are bypassed: the config's "at least two generations
per prompt" check (`_PGConfig`; rows are single actions, not groups) and TRL's sampler, which repeats each
prompt per generation and drops an incomplete last batch (`_ChunkSampler` uses each example once per epoch).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from strop.memory.records import AdvantagePayload, ExampleKind, ExampleRecord
from strop.training import common
from strop.training.sft import LoraSettings
from strop.training.tracking import ReportTo, TrainHooks
from strop.training.trainers import TrainerKind, TrainOutcome, TrainRequest, register_trainer

# The example kinds whose payload is an `AdvantagePayload`.
PG_KINDS: tuple[ExampleKind, ...] = (ExampleKind.ADVANTAGE, ExampleKind.GAME_TURN)
_COLUMNS = ("prompt_ids", "completion_ids", "logprobs", "advantage", "example_id")


class MalformedExampleError(ValueError):
    """A stored example whose payload is not a valid `AdvantagePayload`; the message names the example."""


class PGSettings(BaseModel):
    """Hyper-parameters of the `pg` kind; they map onto TRL's `GRPOConfig`."""

    model_config = ConfigDict(extra="forbid")

    epochs: float = Field(1.0, gt=0, description="Passes over the claimed examples.")
    learning_rate: float = Field(
        1e-4, gt=0, description="Peak learning rate (LoRA wants ~1e-5..2e-4, full fine-tuning ~1e-6..1e-5)."
    )
    batch_size: int = Field(
        8, ge=1, description="Actions per device step (capped at the number of examples)."
    )
    grad_accum: int = Field(
        1,
        ge=1,
        description="Gradient accumulation steps; batch_size * grad_accum actions make one optimizer step.",
    )
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
    lr_scheduler: str = Field(
        "constant",
        description="Transformers scheduler name: constant, linear, cosine... (constant: each job is a "
        "short round of on-policy updates).",
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    seed: int = Field(0, description="Seed for shuffling and adapter initialisation.")
    lora: LoraSettings | None = Field(
        default_factory=LoraSettings,
        description="LoRA settings; omit (or none) for full fine-tuning. Dropout, the "
        "adapter's included, is off while training: the stored log-probs were taken without it.",
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


class _ChunkSampler:
    """Every example once per epoch (shuffled), in chunks of one generation batch, each chunk yielded `repeat`
    times in a row (the dataloader asks for one chunk per micro-step; TRL keeps the first and slices it).

    The last chunk of an epoch is filled up with the epoch's first examples, as DistributedSampler pads, where
    TRL's RepeatSampler would drop an incomplete one: a job with few examples must still train on all of them.
    """

    def __init__(self, n: int, chunk: int, repeat: int, seed: int, shuffle: bool = True) -> None:
        import torch

        self.n, self.chunk, self.repeat, self.shuffle = n, chunk, repeat, shuffle
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)

    def __iter__(self) -> Iterator[int]:
        import torch

        order = (
            torch.randperm(self.n, generator=self.generator).tolist() if self.shuffle else list(range(self.n))
        )
        chunks = math.ceil(self.n / self.chunk)
        filled = list(itertools.islice(itertools.cycle(order), chunks * self.chunk))
        for c in range(chunks):
            part = filled[c * self.chunk : (c + 1) * self.chunk]
            for _ in range(self.repeat):
                yield from part

    def __len__(self) -> int:
        return math.ceil(self.n / self.chunk) * self.chunk * self.repeat


def _trainer_classes() -> tuple[type, type]:
    """`_PGConfig` and `StoredActionTrainer`, defined on first use so importing this module stays cheap."""
    global _CLASSES
    if _CLASSES is not None:
        return _CLASSES
    from dataclasses import dataclass

    import torch
    from trl import GRPOConfig, GRPOTrainer
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.utils import add_fused_lm_head, disable_dropout_in_model, pad, use_adapter

    @dataclass
    class _PGConfig(GRPOConfig):
        """GRPOConfig without the group rule: GRPO insists on >= 2 generations per prompt and a generation batch
        divisible by them, which stored single actions do not have. Validate with a placeholder group of two on
        a doubled batch, then restore the real batch and one generation per row."""

        def __post_init__(self) -> None:
            self.num_generations = 2
            self.per_device_train_batch_size *= 2
            try:
                super().__post_init__()
            finally:
                self.per_device_train_batch_size //= 2
            self.generation_batch_size //= 2
            self.num_generations = 1

    class StoredActionTrainer(GRPOTrainer):
        """GRPOTrainer whose batches are stored actions (see the module docstring): no generation, no rewards."""

        def __init__(self, *args: Any, ref_model: Any = None, **kwargs: Any) -> None:
            config = kwargs["args"]
            beta = config.beta
            if ref_model is not None:  # TRL would load the reference from the config's path: use ours instead
                config.beta = 0.0
            try:
                super().__init__(*args, reward_funcs=_no_reward, **kwargs)
            finally:
                config.beta = beta
            if ref_model is not None and beta != 0.0:
                self.beta = beta
                if config.disable_dropout:
                    disable_dropout_in_model(ref_model)
                add_fused_lm_head(
                    ref_model, temperature=self.temperature, cast_lm_head_to_fp32=config.cast_lm_head_to_fp32
                )
                self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)

        def _get_train_sampler(self, dataset: Any = None) -> Any:
            dataset = self.train_dataset if dataset is None else dataset
            return _ChunkSampler(
                len(dataset),
                self.args.generation_batch_size,
                self.num_iterations * self.args.steps_per_generation,
                seed=self.args.seed,
                shuffle=self.shuffle_dataset,
            )

        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
            device = self.accelerator.device
            mode = "train" if self.model.training else "eval"
            pad_id = self._tokenizer.pad_token_id
            prompts = [torch.tensor(x["prompt_ids"], dtype=torch.long) for x in inputs]
            completions = [torch.tensor(x["completion_ids"], dtype=torch.long) for x in inputs]
            prompt_ids = pad(prompts, padding_value=pad_id, padding_side="left").to(device)
            prompt_mask = pad([torch.ones_like(t) for t in prompts], padding_value=0, padding_side="left").to(
                device
            )
            completion_ids = pad(completions, padding_value=pad_id, padding_side="right").to(device)
            completion_mask = pad(
                [torch.ones_like(t) for t in completions], padding_value=0, padding_side="right"
            ).to(device)
            sampled = pad(
                [torch.tensor(x["logprobs"], dtype=torch.float32) for x in inputs],
                padding_value=0.0,
                padding_side="right",
            ).to(device)
            advantages = torch.tensor(
                [float(x["advantage"]) for x in inputs], dtype=torch.float32, device=device
            )
            num_items_in_batch = self.accelerator.gather(completion_mask.sum()).sum()

            ref_per_token_logps = None
            if self.beta != 0.0:
                input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
                attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
                batch_size = self.args.per_device_train_batch_size
                with (
                    torch.no_grad(),
                    disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
                ):
                    if self.ref_model is not None:
                        ref_per_token_logps, _, _ = self._get_per_token_logps_and_entropies(
                            self.ref_model,
                            input_ids,
                            attention_mask,
                            completion_ids.size(1),
                            batch_size=batch_size,
                        )
                    else:  # LoRA: the parent's adapter kept as "ref", or no adapter at all for a fresh one
                        model = self.accelerator.unwrap_model(self.model)
                        with use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None):
                            ref_per_token_logps, _, _ = self._get_per_token_logps_and_entropies(
                                self.model,
                                input_ids,
                                attention_mask,
                                completion_ids.size(1),
                                batch_size=batch_size,
                            )

            gathered = self.accelerator.gather(advantages)
            self._metrics[mode]["advantage/mean"].append(gathered.mean().item())
            self._metrics[mode]["advantage/abs_mean"].append(gathered.abs().mean().item())
            self._metrics[mode]["frac_advantage_zero"].append((gathered == 0).float().mean().item())
            out = {
                "prompt_ids": prompt_ids,
                "prompt_mask": prompt_mask,
                "completion_ids": completion_ids,
                "completion_mask": completion_mask,
                "advantages": advantages,
                "num_items_in_batch": num_items_in_batch,
                # The stored sampling log-probs are the "old" policy of the ratio; TRL's own off-policy masking
                # (off_policy_mask_threshold) reads the sampling ones under this name.
                "old_per_token_logps": sampled,
                "sampling_per_token_logps": sampled,
            }
            if ref_per_token_logps is not None:
                out["ref_per_token_logps"] = ref_per_token_logps
            return out

    _CLASSES = (_PGConfig, StoredActionTrainer)
    return _CLASSES


_CLASSES: tuple[type, type] | None = None


def _no_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """GRPOTrainer wants a reward source; stored actions come with their advantage, so this is never called."""
    raise RuntimeError("pg trains on stored advantages; no reward is computed")


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

    pg_config, trainer_cls = _trainer_classes()
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
        weight_decay=cfg.weight_decay,
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
    trained = trainer.model
    if hasattr(trained, "peft_config") and "ref" in trained.peft_config:
        trained.delete_adapter("ref")  # TRL's frozen copy of the parent adapter: not part of the new version
    # TRL's figures, averaged over the logged windows (the last window is logged with the run's summary).
    metrics: dict[str, Any] = {"batch_size": batch_size, "grad_accum": grad_accum}
    for key in ("kl", "entropy", "clip_ratio/region_mean", "advantage/mean", "frac_advantage_zero"):
        values = [h[key] for h in trainer.state.log_history if h.get(key) is not None]
        if values:
            metrics[key.replace("/", "_")] = sum(values) / len(values)
    return common.save_outcome(
        trained,
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
