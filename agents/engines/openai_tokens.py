"""The `openai` engine's token-exact path: a local tokenizer renders the prompt ids, the server samples from them.

vLLM's `/v1/completions` (and `strop serve`'s) takes the prompt as token ids and, asked with
`return_token_ids`, returns each choice's `prompt_token_ids`, sampled `token_ids`, and `stop_reason` (the stop
string that ended it). So the client builds the prompt ids exactly as the in-process engines do
(`encode_prompt`: the chat template, or `context_token_ids` plus the new turns' glue) and never lets the
server re-tokenize: what comes back is what a loop stores and a trainer optimises, token for token.

The tokenizer is found on this machine, never downloaded: a strop cache name, a local model or tokenizer
folder, or the Hugging Face hub cache. A hosted API's model name finds none, so it stays on plain text.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from strop.agents.engines.base import Completion, EngineError, FinishReason

TOKEN_MODES = ("auto", "always", "never")
_LOAD_LOCK = threading.Lock()  # concurrent first requests load the tokenizer once


def tokenizer_source(name: str) -> str | None:
    """Where a tokenizer for `name` lies on this machine (a folder, or a hub id already in the hub cache)."""
    from strop.agents.models import ModelNotFoundError, resolve_model

    try:
        return str(resolve_model(name))
    except ModelNotFoundError:
        pass  # not a strop model: maybe a tokenizer-only folder, or a hub id
    path = Path(name).expanduser()
    if (path / "tokenizer_config.json").is_file():
        return str(path)
    if name.count("/") == 1 and "://" not in name:  # the shape of a hub id ("org/name")
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "tokenizer_config.json")
        if isinstance(found, str):
            return name
    return None


def load_tokenizer(name: str, *, required: bool) -> Any:
    """The tokenizer for `name` from local files, or None when there is none and it is not `required`."""
    with _LOAD_LOCK:
        source = tokenizer_source(name)
        if source is None:
            if not required:
                return None
            raise EngineError(
                f"token_ids='always' needs the tokenizer of {name!r} on this machine and none was found (not a "
                "strop cache name, a local folder, or a hub id in the Hugging Face cache): pass tokenizer=PATH, "
                "a folder with the served model's tokenizer files (copy them from the server), or "
                "token_ids='never' to send text"
            )
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as e:
            raise EngineError(f"could not load the tokenizer of {name!r} from {source}: {e}") from e


def completions_from_token_response(
    response: Any, prompt_ids: list[int], want_logprobs: bool, model_version: str, base_url: str
) -> list[Completion]:
    """The completions of a token-id request, checked: a server that returns no ids cannot be token-exact."""
    out = []
    for choice in sorted(response.choices, key=lambda c: c.index):
        token_ids = extra_field(choice, "token_ids")
        if token_ids is None:
            raise EngineError(
                f"{base_url} returned no token ids for a token-id prompt, so the completion cannot be stored "
                "token-exact: serve with vLLM >= 0.10.2 (it returns them when asked with return_token_ids) or "
                "`strop serve`, or set token_ids='never' (text only; multi-turn loops then need "
                "token_context = false)"
            )
        echoed = extra_field(choice, "prompt_token_ids")
        if echoed is not None and list(echoed) != prompt_ids:
            raise EngineError(
                f"{base_url} sampled from other prompt ids than it was sent ({len(echoed)} ids, sent "
                f"{len(prompt_ids)}): it re-tokenized the prompt, so its completions are not token-exact"
            )
        logprobs = None
        if want_logprobs and choice.logprobs is not None and choice.logprobs.token_logprobs is not None:
            logprobs = [float(x) for x in choice.logprobs.token_logprobs]
        stop = extra_field(choice, "stop_reason")
        out.append(
            Completion(
                text=choice.text,
                prompt_token_ids=list(prompt_ids),
                token_ids=list(token_ids),
                logprobs=logprobs,
                finish_reason=FinishReason.LENGTH if choice.finish_reason == "length" else FinishReason.STOP,
                model_version=model_version,
                # a stop string (vLLM: an int is a stop token id, which strop never asks for)
                matched_stop=stop if isinstance(stop, str) else None,
            )
        )
    return out


def extra_field(obj: Any, name: str) -> Any:
    """A non-standard field (vLLM's and strop's token ids) from an openai response object."""
    value = getattr(obj, name, None)
    if value is None and getattr(obj, "model_extra", None):
        value = obj.model_extra.get(name)
    return value
