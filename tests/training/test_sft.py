"""The SFT job on the real tiny model: adapters kept or merged, and a second round continuing an adapter."""

from pathlib import Path

import pytest

from strop.sandbox.tasks import ArithmeticTaskSet, Split
from strop.training.settings import LoraSettings
from strop.training.sft import SFTSettings, run_sft


def _dataset(n: int = 16):  # type: ignore[no-untyped-def]
    from datasets import Dataset

    tasks = ArithmeticTaskSet().tasks(Split.TRAIN, n)
    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": t.prompt}],
                "completion": [{"role": "assistant", "content": t.reference_solution}],
            }
            for t in tasks
        ]
    )


@pytest.mark.slow
def test_lora_adapter_kept_then_continued_then_merged(tiny_model_path: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    cfg = SFTSettings(epochs=1, batch_size=8, learning_rate=1e-3, lora=LoraSettings(r=4, alpha=8))
    first = run_sft(_dataset(), model_path=tiny_model_path, output_dir=tmp_path / "a", settings=cfg)
    assert first.path == str(tiny_model_path) and first.adapter_path == str(tmp_path / "a")
    assert (tmp_path / "a" / "adapter_config.json").is_file() and first.steps == 2 and first.train_loss > 0

    # A second round trains the parent's adapter further: still one adapter over the same base.
    second = run_sft(
        _dataset(),
        model_path=first.path,
        adapter_path=first.adapter_path,
        output_dir=tmp_path / "b",
        settings=cfg,
    )
    assert second.path == str(tiny_model_path) and (tmp_path / "b" / "adapter_config.json").is_file()

    merged = run_sft(
        _dataset(),
        model_path=tiny_model_path,
        output_dir=tmp_path / "c",
        settings=cfg.model_copy(update={"merge": True}),
    )
    assert merged.adapter_path is None and merged.path == str(tmp_path / "c")
    model = AutoModelForCausalLM.from_pretrained(merged.path)
    assert not any("lora" in n for n, _ in model.named_parameters())


@pytest.mark.slow
def test_full_fine_tuning_from_an_adapter_parent_trains_the_merged_weights(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    lora = SFTSettings(epochs=1, batch_size=8, learning_rate=1e-3, lora=LoraSettings(r=4, alpha=8))
    parent = run_sft(_dataset(), model_path=tiny_model_path, output_dir=tmp_path / "a", settings=lora)
    full = run_sft(
        _dataset(),
        model_path=parent.path,
        adapter_path=parent.adapter_path,
        output_dir=tmp_path / "b",
        settings=lora.model_copy(update={"lora": None}),
    )
    assert full.adapter_path is None and full.train_loss > 0 and full.steps == 2
