"""A tiny recipe for the evolve tests: the tiny model, a handful of tasks, one short SFT epoch."""

from __future__ import annotations

from pathlib import Path


def tiny_recipe(
    tmp_path: Path,
    *,
    name: str = "tiny-star",
    db: str | None = None,
    model: str = "tiny",
    train_per_cycle: int = 8,
    heldout: int = 8,
    n: int = 4,
    cycles: int = 1,
    margin: float = 0.0,
    extra: str = "",
) -> Path:
    db_line = f'db = "{db}"\n' if db else ""
    text = f'''name = "{name}"
model = "{model}"
cycles = {cycles}
output_dir = "{tmp_path / "run"}"
{db_line}
[tasks]
name = "arithmetic"
train_per_cycle = {train_per_cycle}
heldout = {heldout}

[collect]
n = {n}
temperature = 1.0
max_tokens = 24
concurrency = 16

[train]
epochs = 1
batch_size = 8
learning_rate = 1e-3
lora = {{ r = 4, alpha = 8 }}

[promotion]
margin = {margin}

[engine]
max_batch_size = 64
{extra}'''
    p = tmp_path / "recipe.toml"
    p.write_text(text)
    return p


def two_stage_recipe(
    tmp_path: Path,
    *,
    name: str = "tiny-two",
    db: str | None = None,
    train_per_cycle: int = 8,
    heldout: int = 8,
    n: int = 4,
    cycles: int = 1,
    concurrency: int = 16,
    critic: str | None = None,
) -> Path:
    """Best-of-N on two task sets (one-digit, then two-digit addition), each stage training the policy on its
    own examples with SFT and gating it on its own held-out set."""
    db_line = f'db = "{db}"\n' if db else ""
    critic_line = f'critic = "{critic}"\n' if critic else ""
    stages = ""
    for stage, digits in (("ones", 1), ("tens", 2)):
        stages += f'''
[[stages]]
name = "{stage}"
loop = "best_of_n"
concurrency = {concurrency}
tasks = {{ name = "arithmetic", options = {{ digits = {digits} }}, train_per_cycle = {train_per_cycle}, heldout = {heldout} }}
config = {{ n = {n}, temperature = 1.0, max_tokens = 24, seed = 0 }}

[stages.train]
kind = "sft"
role = "policy"
settings = {{ epochs = 1, batch_size = 8, learning_rate = 1e-3, lora = {{ r = 4, alpha = 8 }} }}

[stages.eval]
margin = 0.0
'''
    text = f'''name = "{name}"
cycles = {cycles}
output_dir = "{tmp_path / "run"}"
{db_line}
[roles]
policy = "tiny"
{critic_line}
[engine]
max_batch_size = 64
{stages}'''
    p = tmp_path / "recipe.toml"
    p.write_text(text)
    return p
