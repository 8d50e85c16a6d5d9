"""The real 'tiny' model: loads with Auto classes, speaks its chat template, is partly right, trains in TRL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from strop.agents.models import read_meta, resolve_model


def test_meta_records_heldout_accuracy_in_range(tiny_model_path: Path) -> None:
    meta = read_meta(tiny_model_path)
    assert 0.20 <= meta["heldout_accuracy"] <= 0.60, meta
    assert meta["heldout_n"] >= 100
    assert 300_000 <= meta["parameters"] <= 10_000_000
    assert resolve_model("tiny") == tiny_model_path.resolve()
    config = json.loads((tiny_model_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]


def test_tokenizer_roundtrip_and_digits(tiny_model_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    text = "Step 1: 98 + 69 = 167\n#### 167 — é"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    digits = [t for t in tok.convert_ids_to_tokens(tok("12345", add_special_tokens=False)["input_ids"])]
    assert digits == ["1", "2", "3", "4", "5"]
    assert tok.pad_token and tok.eos_token and tok.bos_token and tok.pad_token != tok.eos_token


def test_chat_template(tiny_model_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    msgs = [{"role": "user", "content": "What is 1 + 2?"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        "<|user|>\nWhat is 1 + 2?\n<|assistant|>\n"
    )
    full = tok.apply_chat_template([*msgs, {"role": "assistant", "content": "#### 3"}], tokenize=False)
    assert full == "<|user|>\nWhat is 1 + 2?\n<|assistant|>\n#### 3<|eos|>"
    out = tok.apply_chat_template(
        [*msgs, {"role": "assistant", "content": "#### 3"}],
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tok.decode(masked) == "#### 3<|eos|>"


def test_answers_in_task_format(tiny_model_path: Path) -> None:
    """Greedy answers parse as the reference format; accuracy on fresh held-out problems is partial."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from strop.agents.models.tiny import accuracy
    from strop.sandbox.tasks.arithmetic import ArithmeticTaskSet

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    task_set = ArithmeticTaskSet(digits=2, ops=("+",), seed=123)
    tasks = task_set.tasks("heldout", n=100)
    acc = accuracy(model, tok, tasks, task_set)
    assert 0.10 <= acc <= 0.75, acc
    enc = tok.apply_chat_template(
        [{"role": "user", "content": tasks[0].prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**enc, max_new_tokens=32, do_sample=False)
    text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.startswith("Step 1: ") and "####" in text, text
    assert task_set.verify(tasks[0], text).extracted is not None


@pytest.mark.slow
def test_trl_sft_completion_only(tiny_model_path: Path, tmp_path: Path) -> None:
    """TRL fine-tunes it on conversational prompt/completion data with the loss on the completion only."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": f"What is {a} + 11?"}],
                "completion": [
                    {"role": "assistant", "content": f"Step 1: {a} + 11 = {a + 11}\n#### {a + 11}"}
                ],
            }
            for a in range(10, 18)
        ]
    )
    args = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        max_length=128,
        logging_steps=1,
        completion_only_loss=True,
        learning_rate=1e-3,
    )
    trainer = SFTTrainer(model=str(tiny_model_path), args=args, train_dataset=data)
    batch = next(iter(trainer.get_train_dataloader()))
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    kept = trainer.processing_class.decode(ids[labels != -100])
    assert kept.startswith("Step 1:") and kept.endswith("<|eos|>"), kept
    result = trainer.train()
    assert result.global_step == 2 and result.training_loss > 0


@pytest.mark.slow
def test_trl_sft_assistant_only_loss(tiny_model_path: Path, tmp_path: Path) -> None:
    """Conversational 'messages' data with assistant_only_loss uses the template's generation markers."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "user", "content": f"What is {a} + 2?"},
                    {"role": "assistant", "content": f"#### {a + 2}"},
                ]
            }
            for a in range(10, 14)
        ]
    )
    args = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=4,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        max_length=64,
        assistant_only_loss=True,
    )
    result = SFTTrainer(model=str(tiny_model_path), args=args, train_dataset=data).train()
    assert result.global_step == 1


def test_continue_final_message(tiny_model_path: Path) -> None:
    """Engines continue a partial assistant turn (e.g. a step prefix in tree search) without closing it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    msgs = [{"role": "user", "content": "What is 1 + 2?"}, {"role": "assistant", "content": "Step 1:"}]
    text = tok.apply_chat_template(msgs, tokenize=False, continue_final_message=True)
    assert text == "<|user|>\nWhat is 1 + 2?\n<|assistant|>\nStep 1:"
