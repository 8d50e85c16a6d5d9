"""The settings every trainer kind shares, declared and described once.

Each kind's settings model (`SFTSettings`, `DPOSettings`, `PGSettings`, `GRPOSettings`) extends
`TrainerSettings` and declares only what is its own algorithm's. A shared field whose default differs per kind
is redeclared in the kind with its type alias below and the kind's default (`epochs: Epochs = 2.0`): the alias
carries the constraints and the description, so the text is still written once. `common.training_args` maps
these fields onto TRL's config the same way for every kind.

Only pydantic at module level: recipe validation imports the settings models.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from strop.training.tracking import ReportTo


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


# Shared fields some kind gives another default: a kind redeclares them with the alias, so the constraints
# and the description stay here.
Epochs = Annotated[
    float,
    Field(gt=0, description="Passes over the training data: the claimed examples (grpo: the stage's tasks)."),
]
LearningRate = Annotated[
    float,
    Field(
        gt=0,
        description="Peak learning rate. With LoRA about ~2e-4 for sft, ~5e-5 for dpo, ~1e-4 for pg and grpo; "
        "full fine-tuning wants ten to a hundred times less.",
    ),
]
BatchSize = Annotated[
    int,
    Field(
        ge=1,
        description="Rows per device step (TRL's per_device_train_batch_size): examples for sft, pairs (two "
        "sequences each) for dpo, actions for pg (capped at the number of examples), completions for grpo.",
    ),
]
GradAccum = Annotated[
    int,
    Field(
        ge=1,
        description="Gradient accumulation steps: batch_size x grad_accum rows make one optimizer step.",
    ),
]
LrScheduler = Annotated[
    str,
    Field(
        description="Transformers scheduler name: linear, cosine, constant... (pg and grpo default to "
        "constant: each of their jobs is a short round of on-policy updates)."
    ),
]
LoggingSteps = Annotated[
    int, Field(ge=1, description="Log TRL's figures (loss, rewards, KL...) every this many steps.")
]
MaxLength = Annotated[
    int,
    Field(
        ge=8,
        description="Longest tokenized example (for dpo, prompt + answer); longer ones are truncated.",
    ),
]


class TrainerSettings(BaseModel):
    """What every trainer kind sets the same way; they map onto TRL's `TrainingArguments` fields."""

    model_config = ConfigDict(extra="forbid")

    epochs: Epochs = 1.0
    learning_rate: LearningRate = 1e-4
    batch_size: BatchSize = 8
    grad_accum: GradAccum = 1
    lr_scheduler: LrScheduler = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    seed: int = Field(
        0,
        description="Seed for shuffling and adapter initialisation (grpo: also for rollout sampling when the "
        "loop config has no seed).",
    )
    lora: LoraSettings | None = Field(
        default_factory=LoraSettings,
        description="LoRA settings; omit (or none) for full fine-tuning. A parent that is itself an adapter is "
        "continued with its own adapter settings. pg and grpo train without dropout (the adapter's included): "
        "their log-probs were taken without it.",
    )
    merge: bool = Field(
        False,
        description="Merge the adapter into the weights and save a full model (else keep the adapter over "
        "the base).",
    )
    bf16: bool | None = Field(
        None, description="bf16 mixed precision; None means only when a CUDA GPU is present."
    )
    report_to: ReportTo
    logging_steps: LoggingSteps = 5


class OfflineTrainerSettings(TrainerSettings):
    """The settings of a kind that trains on stored examples it claims (sft, dpo, pg), unlike grpo's on-line
    rollouts."""

    max_examples: int | None = Field(
        None,
        ge=1,
        description="Claim at most this many examples (for dpo, pairs) per job, oldest first; the rest wait "
        "for the next job.",
    )
