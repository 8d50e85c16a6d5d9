"""The OpenAI wire format of `strop serve`: request models, what is refused, and response bodies.

What strop does not implement is refused with a 400 that names the parameter, never dropped: a client that
sends `parallel_tool_calls=true` and gets one call back would silently misbehave. Tools follow the OpenAI
schema (rendered and parsed by agents/engines/tools.py): a valid call comes back as `message.tool_calls` with
finish_reason "tool_calls"; text that is not a valid call comes back as content. Parameters that only identify the caller
(`user`, `metadata`, `service_tier`...) change nothing about the answer and are accepted.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from strop.agents.engines.base import Completion, GenerationRequest, Message, SamplingParams
from strop.agents.engines.tools import (
    TOOL_CALL_CLOSE,
    ParsedReply,
    ToolSpec,
    call_prefix,
    check_tool_choice,
    parse_tool_calls,
    tool_mode,
)

MAX_TOP_LOGPROBS = 20

# Accepted and without effect on the answer: caller identification, billing hints, vLLM's token-id switch
# (strop always returns token ids), the neutral values of sampling knobs strop does not have.
_HARMLESS = {
    "user",
    "metadata",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "return_token_ids",
}
# Refused unless neutral: name -> (test that the value is neutral, what to send instead).
_NEUTRAL: dict[str, tuple[Any, str]] = {
    # the chat endpoint declares tools and tool_choice; on /v1/completions they land here
    "tools": (lambda v: not v, "tools need the chat endpoint (/v1/chat/completions)"),
    "tool_choice": (lambda v: v in (None, "none"), "tools need the chat endpoint (/v1/chat/completions)"),
    "parallel_tool_calls": (
        lambda v: v in (None, False),
        "strop returns at most one tool call per turn: send parallel_tool_calls=false or drop it",
    ),
    "functions": (lambda v: not v, "legacy function calling is not supported: send `tools` instead"),
    "function_call": (
        lambda v: v in (None, "none"),
        "legacy function calling is not supported: send `tool_choice` instead",
    ),
    "response_format": (
        lambda v: v is None or (isinstance(v, dict) and v.get("type") == "text"),
        'only response_format {"type": "text"} is supported (no JSON mode or schemas)',
    ),
    "logit_bias": (lambda v: not v, "logit_bias is not supported: drop it"),
    "presence_penalty": (lambda v: not v, "presence_penalty is not supported: send 0 or drop it"),
    "frequency_penalty": (lambda v: not v, "frequency_penalty is not supported: send 0 or drop it"),
    "modalities": (lambda v: v in (None, ["text"]), 'only text output is supported: modalities ["text"]'),
    "audio": (lambda v: v is None, "audio output is not supported: drop `audio`"),
    "prediction": (lambda v: v is None, "predicted outputs are not supported: drop `prediction`"),
    "store": (
        lambda v: not v,
        "strop serve stores no completions: drop `store` (strop's own store is the runner's)",
    ),
    "echo": (lambda v: not v, "echo is not supported: prepend the prompt yourself"),
    "suffix": (lambda v: not v, "suffix (insertion) is not supported: drop it"),
    "reasoning_effort": (lambda v: v is None, "reasoning_effort is not supported: drop it"),
    "verbosity": (lambda v: v is None, "verbosity is not supported: drop it"),
    "web_search_options": (lambda v: v is None, "web search is not supported: drop it"),
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = Field(False, description="Send a last chunk with the usage of the whole request.")


class _Common(BaseModel):
    """Fields both endpoints share. Unknown fields are kept so `refused()` can name them."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, description="A name from /v1/models (or the followed lineage); else 404.")
    n: int = Field(1, description="Completions per request.")
    temperature: float = Field(1.0, description="0 is greedy.")
    top_p: float = Field(1.0, description="Nucleus sampling mass.")
    max_tokens: int | None = Field(None, description="Most new tokens (default 256).")
    max_completion_tokens: int | None = Field(None, description="Newer name for max_tokens; wins if both.")
    stop: str | list[str] | None = Field(None, description="Stop strings.")
    seed: int | None = Field(None, description="Seed for reproducible sampling (streamed or not).")
    stream: bool = Field(False, description="Server-sent events, one chunk per decoding step.")
    stream_options: StreamOptions | None = Field(None, description="include_usage: a final usage chunk.")
    best_of: int | None = Field(None, description="Accepted only equal to n (no server-side reranking).")

    def sampling(self, logprobs: bool, top_logprobs: int = 0) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        max_tokens = self.max_completion_tokens or self.max_tokens
        return SamplingParams(
            n=self.n,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop,
            seed=self.seed,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            **({"max_tokens": max_tokens} if max_tokens is not None else {}),
        )

    def refused(self) -> tuple[str, str] | None:
        """The first parameter strop would otherwise ignore, with the reason; None when all are honoured."""
        if self.best_of not in (None, self.n):
            return "best_of", f"best_of must equal n ({self.n}): strop serve does not rerank on the server"
        for name, value in (self.model_extra or {}).items():
            if name in _HARMLESS:
                continue
            if name in _NEUTRAL:
                neutral, why = _NEUTRAL[name]
                if not neutral(value):
                    return name, why
                continue
            return (
                name,
                f"strop serve does not implement `{name}`: drop it (see docs/serving.md for what is supported)",
            )
        return None


class ChatCompletionRequest(_Common):
    messages: list[Message] = Field(
        description="The conversation: text content, assistant `tool_calls` and `tool` messages."
    )
    logprobs: bool = Field(False, description="Return per-token log-probs in choices[].logprobs.content.")
    top_logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="Most likely tokens per position (needs logprobs=true)."
    )
    continue_final_message: bool = Field(
        False, description="Continue the last assistant message (vLLM field)."
    )
    add_generation_prompt: bool = Field(
        True, description="Accepted for vLLM compatibility; the turn is opened unless continue_final_message."
    )
    tools: list[ToolSpec] | None = Field(None, description="Functions the model may call (OpenAI schema).")
    tool_choice: str | dict[str, Any] | None = Field(
        None, description='"auto" (default with tools), "none", "required" or a named function.'
    )

    @field_validator("tool_choice")
    @classmethod
    def _choice_fits_tools(cls, v: Any, info: ValidationInfo) -> Any:
        if v not in (None, "none") and not info.data.get("tools"):
            raise ValueError("`tool_choice` needs `tools`: send the tools the model may call, or drop it")
        check_tool_choice(info.data.get("tools"), v)
        return v

    def sampling(self, logprobs: bool, top_logprobs: int = 0) -> SamplingParams:
        """With tools on, the reply also stops at the end of its first call: one call per turn, no rambling."""
        params = super().sampling(logprobs, top_logprobs)
        if tool_mode(self.tools, self.tool_choice)[0] != "off" and TOOL_CALL_CLOSE not in params.stop:
            params = params.model_copy(update={"stop": [*params.stop, TOOL_CALL_CLOSE]})
        return params


class CompletionRequest(_Common):
    prompt: str | list[int] = Field(
        description="Raw prompt text, used without chat template; or token ids, used verbatim (as vLLM takes "
        "them), which is how the `openai` engine stays token-exact."
    )
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="Return the sampled tokens' log-probs, and the k most likely tokens at each position.",
    )

    @field_validator("prompt")
    @classmethod
    def _ids_are_ids(cls, v: str | list[int]) -> str | list[int]:
        if isinstance(v, list) and (not v or min(v) < 0):
            raise ValueError("a token-id prompt must be a non-empty list of non-negative token ids")
        return v


def error_body(
    message: str, *, kind: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# --------------------------------------------------------------------------------------------- responses
def token_strings(tokenizer: Any, ids: list[int]) -> list[str]:
    if tokenizer is None:
        return [str(i) for i in ids]
    return [tokenizer.decode([i]) for i in ids]


def chat_logprobs(
    tokenizer: Any, ids: list[int], logprobs: list[float] | None, top: list[dict[int, float]] | None
) -> dict[str, Any]:
    """OpenAI's choices[].logprobs for chat: one entry per token, with its top alternatives."""
    entries = []
    for j, (t, v) in enumerate(zip(token_strings(tokenizer, ids), logprobs or [], strict=False)):
        alts = []
        if top is not None and j < len(top):
            for alt_id, alt_lp in sorted(top[j].items(), key=lambda kv: -kv[1]):
                s = token_strings(tokenizer, [alt_id])[0]
                alts.append({"token": s, "logprob": alt_lp, "bytes": list(s.encode())})
        entries.append({"token": t, "logprob": v, "bytes": list(t.encode()), "top_logprobs": alts})
    return {"content": entries}


def text_logprobs(
    tokenizer: Any,
    ids: list[int],
    logprobs: list[float] | None,
    top: list[dict[int, float]] | None,
    offset: int = 0,
) -> dict[str, Any]:
    """OpenAI's choices[].logprobs for completions: parallel lists, top alternatives keyed by token text."""
    tokens = token_strings(tokenizer, ids)
    offsets, at = [], offset
    for t in tokens:
        offsets.append(at)
        at += len(t)
    tops = None
    if top is not None:
        tops = [
            {token_strings(tokenizer, [i])[0]: lp for i, lp in sorted(step.items(), key=lambda kv: -kv[1])}
            for step in top[: len(tokens)]
        ]
    return {
        "tokens": tokens,
        "token_logprobs": list(logprobs or []),
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def usage(prompt_len: int, completions: list[Completion]) -> dict[str, int]:
    generated = sum(len(c.token_ids) for c in completions)
    return {
        "prompt_tokens": prompt_len,
        "completion_tokens": generated,
        "total_tokens": prompt_len + generated,
    }


def parse_reply(
    completion: Completion, request: GenerationRequest | None, tokenizer: Any
) -> ParsedReply | None:
    """The reply read for a tool call when the request has tools on, else None (plain text)."""
    if request is None or tool_mode(request.tools, request.tool_choice)[0] == "off":
        return None
    prefix = call_prefix(tokenizer, request.tools, request.tool_choice)
    return parse_tool_calls(completion.text, request.tools, request.tool_choice, prefix)


def chat_response(
    completions: list[Completion],
    logprobs: bool,
    tokenizer: Any,
    *,
    request: GenerationRequest | None = None,
) -> dict[str, Any]:
    """The chat.completion body. With `request` (its tools and tool_choice) each reply is read for a tool call;
    a choice then also says `invalid_tool_call` (the reply tried to call a tool and failed), for episode stats.
    """
    choices = []
    for i, c in enumerate(completions):
        lp = chat_logprobs(tokenizer, c.token_ids, c.logprobs, c.top_logprobs) if logprobs else None
        choice: dict[str, Any] = {
            "index": i,
            "message": {"role": "assistant", "content": c.text},
            "finish_reason": c.finish_reason.value,
            "stop_reason": c.matched_stop,
            "logprobs": lp,
            "token_ids": c.token_ids,
        }
        parsed = parse_reply(c, request, tokenizer)
        if parsed is not None:
            choice["message"]["content"] = parsed.content
            if parsed.tool_calls:
                choice["message"]["tool_calls"] = parsed.tool_calls
                choice["finish_reason"] = "tool_calls"
            choice["invalid_tool_call"] = parsed.invalid
        choices.append(choice)
    return _envelope("chatcmpl", "chat.completion", completions, choices)


def text_response(completions: list[Completion], logprobs: bool, tokenizer: Any) -> dict[str, Any]:
    choices = []
    for i, c in enumerate(completions):
        lp = text_logprobs(tokenizer, c.token_ids, c.logprobs, c.top_logprobs) if logprobs else None
        choices.append(
            {
                "index": i,
                "text": c.text,
                "finish_reason": c.finish_reason.value,
                "stop_reason": c.matched_stop,  # vLLM's fields: the stop string that ended it, and the prompt
                "logprobs": lp,
                "token_ids": c.token_ids,
                "prompt_token_ids": c.prompt_token_ids,
            }
        )
    return _envelope("cmpl", "text_completion", completions, choices)


def _envelope(prefix: str, kind: str, completions: list[Completion], choices: list[Any]) -> dict[str, Any]:
    prompt = completions[0].prompt_token_ids if completions else []
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        # the version that answered (it may differ from /v1/models a moment later, after a promotion)
        "model": completions[0].model_version if completions else "",
        "choices": choices,
        "usage": usage(len(prompt), completions),
        "prompt_token_ids": prompt,
    }
