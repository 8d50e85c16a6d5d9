"""The real SmolLM2 import: a plain, trainable Llama with the ChatML template, answering sanely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from strop.agents.models import read_meta, resolve_model

pytestmark = [pytest.mark.smollm2]


def test_saved_config_is_plain_llama(smollm2_path: Path) -> None:
    config = json.loads((smollm2_path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (smollm2_path / "model.safetensors").is_file()
    assert resolve_model("smollm2") == smollm2_path.resolve()
    meta = read_meta(smollm2_path)
    assert 130_000_000 < meta["parameters"] < 140_000_000
    assert "gguf" in meta["source"].lower()


def test_chat_template_is_chatml(smollm2_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>"
    assert tok.model_max_length == 8192


@pytest.mark.slow
def test_generates_sane_text(smollm2_path: Path) -> None:
    from strop.agents.models.smollm2 import sanity_check

    answer = sanity_check(smollm2_path, max_new_tokens=16)
    assert any(ch.isdigit() for ch in answer)


@pytest.mark.slow
def test_trl_trains_it(smollm2_path: Path, tmp_path: Path) -> None:
    """A trainer refuses GGUF-quantized configs; the imported folder must train one SFT step."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": "What is 2 + 3?"}],
                "completion": [{"role": "assistant", "content": "Step 1: 2 + 3 = 5\n#### 5"}],
            },
        ]
    )
    args = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        max_length=48,
        logging_steps=1,
    )
    trainer = SFTTrainer(model=str(smollm2_path), args=args, train_dataset=data)
    result = trainer.train()
    assert result.global_step == 1 and result.training_loss > 0
