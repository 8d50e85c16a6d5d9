"""Loading the hf engine's weights: a model folder (optionally with a LoRA adapter), and adapter swaps.

Kept apart from decoding because it is where the engine meets the disk and PEFT: folder checks that name the
fix, the device and dtype chosen for the machine, an adapter merged for inference but kept wrapped (so a
reload to another adapter on the same base unmerges it instead of reading the base again), and the end-of-
sequence ids every batch stops at.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from strop.agents.engines.base import EngineError
from strop.agents.models.cache import missing_folder_message

MISSING_MODEL_FIX = (
    "pass a local Hugging Face model folder (config.json, weights and tokenizer files) or a cache name "
    "(`strop models list` shows the cache; `strop models build-tiny` makes 'tiny')"
)


@dataclass(frozen=True)
class LoadedModel:
    """A model and tokenizer ready to decode, on the device and in the dtype they were loaded with."""

    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype


def check_model_folder(path: Path, what: str) -> None:
    """Raise an EngineError naming the fix unless `path` is a model (or, `what='adapter'`, adapter) folder."""
    if not path.exists():
        # Often a registry version's folder (moved, another host, an old relative row): the message names
        # the folders tried and the setting, not the cache builders (agents/models/cache.py).
        raise EngineError(missing_folder_message(path, what))
    if not path.is_dir():
        raise EngineError(f"{path} is a file, not a {what} folder: {MISSING_MODEL_FIX}")
    marker = "adapter_config.json" if what == "adapter" else "config.json"
    if not (path / marker).is_file():
        raise EngineError(
            f"{path} is not a {what} folder (it has no {marker}): "
            + (
                "pass the folder a PEFT training run saved (it holds adapter_config.json)"
                if what == "adapter"
                else MISSING_MODEL_FIX
            )
        )


def _device_and_dtype(device_arg: str | None, dtype_arg: str | None) -> tuple[torch.device, torch.dtype]:
    """The device asked for (else CUDA when there is one) and a dtype it runs well: float32 on CPU."""
    device = torch.device(device_arg or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype_arg is None:
        return device, (
            torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        )
    dtype = getattr(torch, str(dtype_arg).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise EngineError(f"unknown dtype {dtype_arg!r}: use float32, bfloat16 or float16")
    if device.type == "cpu" and dtype != torch.float32:
        raise EngineError(
            f"dtype {dtype_arg} is slow or unsupported on CPU: leave dtype unset (float32 on CPU)"
        )
    return device, dtype


def load_model(
    model_path: Path, adapter_path: Path | None, device_arg: str | None, dtype_arg: str | None
) -> LoadedModel:
    """Read a causal LM (and its adapter, merged) from disk, in eval mode, tokenizer padding on the left."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_folder(model_path, "model")
    if adapter_path is not None:
        check_model_folder(adapter_path, "adapter")
    device, dtype = _device_and_dtype(device_arg, dtype_arg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    except (OSError, ValueError) as e:
        raise EngineError(f"could not load a causal LM from {model_path}: {e}. {MISSING_MODEL_FIX}") from e
    if adapter_path is not None:
        from peft import PeftModel

        # Merged for inference (one matmul per layer instead of base + low-rank), but kept wrapped so that
        # a reload to another adapter on this base can unmerge it instead of reading the base again.
        model = PeftModel.from_pretrained(model, adapter_path)
        model.merge_adapter()
    model.to(device).eval()
    # Left padding: decoder-only models continue from the last position of each row.
    tokenizer.padding_side = "left"
    return LoadedModel(model, tokenizer, device, dtype)


def swap_adapter(model: Any, adapter_path: Path | None, device: torch.device) -> Any:
    """The model with its adapter (if any) unmerged and removed, and `adapter_path`'s merged in its place.

    Unmerging is exact up to float rounding, so the base is never read from disk again.
    """
    from peft import PeftModel

    if adapter_path is not None:
        check_model_folder(adapter_path, "adapter")
    if isinstance(model, PeftModel):
        model.unmerge_adapter()
        model = model.unload()  # the bare base, LoRA layers removed
    if adapter_path is not None:
        model = PeftModel.from_pretrained(model, adapter_path)
        model.to(device).eval()
        model.merge_adapter()
    return model


def eos_ids(model: Any, tokenizer: Any, model_path: Path) -> list[int]:
    """Every id that ends a sequence (the tokenizer's and the generation config's); pads with EOS if unset."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            eos.add(source)
        elif isinstance(source, list):
            eos.update(source)
    if not eos:
        raise EngineError(f"{model_path}: the tokenizer has no eos_token; set one in tokenizer_config.json")
    return sorted(eos)
