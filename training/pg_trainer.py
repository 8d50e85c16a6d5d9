"""The TRL side of the `pg` kind: a `GRPOTrainer` whose batches are stored actions instead of fresh samples.

`StoredActionTrainer` subclasses TRL's `GRPOTrainer` and replaces only where a batch comes from.
`GRPOTrainer._generate_and_score_completions` normally samples completions and turns rewards into
group-relative advantages; here it pads the stored prompt/completion ids, hands the stored sampling log-probs
over as `old_per_token_logps` and the stored advantages as `advantages`, and (beta > 0) computes the
reference log-probs exactly as TRL does. Everything after that is TRL's own: the clipped loss and its
normalisation (`loss_type`), the KL term, entropy and clip-ratio metrics, gradient accumulation, the
optimizer, `num_iterations` (several passes over one batch, which is where the clip bites) and LoRA. Two
GRPO-specific rules do not apply to stored actions and are bypassed: the config's "at least two generations
per prompt" check (`_PGConfig`; rows are single actions, not groups) and TRL's sampler, which repeats each
prompt per generation and drops an incomplete last batch (`_ChunkSampler` uses each example once per epoch).

The classes are defined on first use (`trainer_classes`), so importing the kind does not import TRL or torch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any


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


def trainer_classes() -> tuple[type, type]:
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
