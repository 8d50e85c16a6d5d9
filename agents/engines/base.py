"""The Engine contract: what every model backend (hf, openai, vllm) accepts and returns.

Completions carry token ids and log-probs, not only text, because re-tokenizing text before training is a
known source of drift between what the model sampled and what the trainer optimises.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from strop.agents.engines.tools import (
    ToolSpec,
    call_prefix,
    check_tool_choice,
    new_call_id,
    render_chat,
    template_messages,
)


class EngineError(RuntimeError):
    """An engine could not serve a request; the message says what was wrong and what to do."""


class PromptTooLongError(EngineError, ValueError):
    """The prompt does not fit the model's context window."""


class SamplingParams(BaseModel):
    """How to sample. Validated on construction so a bad value fails with its field named."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(1, ge=1, le=256, description="Completions to sample for this request.")
    temperature: float = Field(1.0, ge=0.0, le=10.0, description="0 means greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(256, ge=1, le=32768, description="Most new tokens per completion.")
    stop: list[str] = Field(default_factory=list, description="Strings that end a completion (not included).")
    seed: int | None = Field(None, description="Seed for reproducible sampling; None draws one.")
    logprobs: bool = Field(True, description="Return the log-prob of each sampled token.")
    top_logprobs: int = Field(
        0,
        ge=0,
        le=20,
        description="Also return the k most likely tokens at each position (needs `logprobs`).",
    )

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> SamplingParams:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=True")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field("{}", description="The arguments as JSON text, as the OpenAI API carries them.")

    @field_validator("arguments", mode="before")
    @classmethod
    def _json_text(cls, v: Any) -> Any:
        return json.dumps(v) if isinstance(v, dict) else v


class ToolCall(BaseModel):
    """One call an assistant message made (OpenAI shape)."""

    id: str = Field(default_factory=new_call_id)
    type: Literal["function"] = "function"
    function: FunctionCall


_OPTIONAL = ("tool_calls", "tool_call_id", "name")


class Message(BaseModel):
    """One chat message, in the OpenAI / Hugging Face chat format.

    `content` is always a string (callers read `m.content`): null becomes "", a list of text parts their text
    joined by newlines. The tool fields are left out of `model_dump()` while unset, so plain messages dump as
    `{"role", "content"}`, the conversational format TRL and the store expect.
    """

    role: str = Field(description="system, user, assistant or tool.")
    content: str = ""
    tool_calls: list[ToolCall] | None = Field(None, description="The calls an assistant message made.")
    tool_call_id: str | None = Field(None, description="In a `tool` message: the call it answers.")
    name: str | None = Field(None, description="The participant's or tool's name (OpenAI's optional field).")

    @field_validator("content", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        if v is None:
            return ""
        if not isinstance(v, list):
            return v
        texts = []
        for part in v:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(
                    f"content part of type {kind!r} is not supported: strop serves text only, send "
                    '{"type": "text", "text": ...} parts or a string'
                )
        return "\n".join(texts)

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in _OPTIONAL:
            if data.get(key) is None:
                data.pop(key, None)
        return data


class GenerationRequest(BaseModel):
    """Chat messages or a raw prompt, plus sampling parameters."""

    model_config = ConfigDict(extra="forbid")

    messages: list[Message] | None = Field(
        None, description="Chat messages; the engine applies the chat template."
    )
    prompt: str | None = Field(None, description="A raw prompt, used as is (no chat template).")
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    continue_final: bool = Field(
        False,
        description="Continue the last assistant message instead of opening a new one (step-wise search).",
    )
    context_token_ids: list[int] | None = Field(
        None,
        description="Token ids of an earlier exchange, used verbatim (its prompt and completion ids, as the engine "
        "reported them); `messages` are then only the new turns, rendered with the chat template and appended, "
        "or empty to continue right after those ids (step-wise search extending a partial answer). Multi-turn "
        "loops use it so earlier turns are never re-tokenized. Needs a tokenizer on the client: hf and vllm have "
        "one; the openai engine renders the new turns with a local copy and sends token ids (openai.py).",
    )
    tools: list[ToolSpec] | None = Field(
        None,
        description="OpenAI tool specs the model may call (agents/engines/tools.py says how they render).",
    )
    tool_choice: str | dict[str, Any] | None = Field(
        None,
        description='"auto" (the default with tools), "none", "required" or {"type": "function", "function": '
        '{"name": ...}}; required and a named function prefill the assistant turn with the call\'s opening.',
    )

    @model_validator(mode="after")
    def _one_input(self) -> GenerationRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of `messages` or `prompt`")
        if self.context_token_ids is not None:
            if self.messages is None or self.continue_final:
                raise ValueError(
                    "`context_token_ids` continues a chat: give the new turns as `messages` (an "
                    "empty list to continue right after the ids), and no `prompt` or `continue_final`"
                )
            if not self.context_token_ids or min(self.context_token_ids) < 0:
                raise ValueError("`context_token_ids` must be non-empty, non-negative token ids")
        check_tool_choice(self.tools, self.tool_choice)
        if self.tools and self.prompt is not None:
            raise ValueError("`tools` need chat `messages`: a raw `prompt` has no chat template to show them")
        if self.tools and self.continue_final and self.tool_choice not in (None, "auto", "none"):
            raise ValueError(
                "a required or named `tool_choice` opens a new assistant turn with the call: drop "
                "`continue_final`, or use tool_choice 'auto'"
            )
        return self

    @classmethod
    def chat(cls, content: str, *, system: str | None = None, **sampling: object) -> GenerationRequest:
        """Shorthand for a single user turn."""
        msgs = ([Message(role="system", content=system)] if system else []) + [
            Message(role="user", content=content)
        ]
        return cls(messages=msgs, sampling=SamplingParams(**sampling))


class FinishReason(StrEnum):
    STOP = "stop"  # end-of-sequence token or a stop string
    LENGTH = "length"  # hit max_tokens


class Completion(BaseModel):
    """One sampled completion with everything training needs."""

    text: str
    prompt_token_ids: list[int]
    token_ids: list[int] = Field(description="Completion token ids, as sampled (after stop-string trimming).")
    logprobs: list[float] | None = Field(None, description="Log-prob of each token in `token_ids`.")
    finish_reason: FinishReason
    model_version: str = Field(description="Model id / version that produced this completion.")
    matched_stop: str | None = Field(
        None,
        description="The stop string that ended it (not in `text`; its tokens are in `token_ids`); None when "
        "it ended at EOS or max_tokens, or the backend does not say.",
    )
    top_logprobs: list[dict[int, float]] | None = Field(
        None,
        description="Per token of `token_ids`: the `top_logprobs` most likely token ids and their log-probs "
        "(same distribution as `logprobs`); None unless asked for.",
    )


@runtime_checkable
class Engine(Protocol):
    """A model backend. One completion list per request, `n` completions each, in request order.

    A request may also be given as a plain dict in `GenerationRequest`'s JSON form: critics sit below this
    package and ask engines without importing it.
    """

    @property
    def model_version(self) -> str: ...

    async def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]: ...

    async def close(self) -> None: ...


def as_requests(requests: list[GenerationRequest] | list[dict[str, Any]]) -> list[GenerationRequest]:
    """Requests as validated objects; dicts (the JSON wire form) are validated here, naming a bad field."""
    return [r if isinstance(r, GenerationRequest) else GenerationRequest.model_validate(r) for r in requests]


def encode_prompt(tokenizer: Any, request: GenerationRequest, model_path: object) -> list[int]:
    """Prompt token ids as every local backend must build them, so `prompt_token_ids` agree across engines.

    Messages go through the chat template; a raw prompt is tokenized as is (with BOS if the tokenizer adds one);
    with `context_token_ids` the new turns are appended to those ids (see `continuation_ids`).
    """
    if request.prompt is not None:
        return list(tokenizer(request.prompt)["input_ids"])
    if request.context_token_ids is not None and not request.messages:
        return list(request.context_token_ids)  # ids to continue as they stand (a served token-id prompt)
    if not getattr(tokenizer, "chat_template", None):
        raise EngineError(
            f"{model_path} has no chat template, so it cannot take `messages`: "
            "send a raw `prompt` instead, or add a chat_template to its tokenizer_config.json"
        )
    if request.context_token_ids is not None:
        return continuation_ids(
            tokenizer,
            request.context_token_ids,
            request.messages or [],
            tools=request.tools,
            tool_choice=request.tool_choice,
        )
    text = render_chat(
        tokenizer,
        request.messages or [],
        tools=request.tools,
        tool_choice=request.tool_choice,
        continue_final=request.continue_final,
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


_SENTINEL = "\x00strop-turn-end\x00"


def continuation_ids(
    tokenizer: Any,
    context: list[int],
    messages: list[Message],
    *,
    tools: list[dict[str, Any]] | None = None,
    tool_choice: str | dict[str, Any] | None = None,
) -> list[int]:
    """`context` verbatim, then the chat template's text that follows an assistant turn: the turn's end, the new
    messages and the next assistant header (with a forced tool call's prefill).

    The template is rendered around a sentinel assistant message and only what follows the sentinel is
    tokenized, so the earlier turns keep the exact ids they were sampled with. When the context already ends
    with the end-of-turn token (a completion that stopped at EOS), the template's copy of it is dropped. No
    messages: the context itself, to be continued as it stands. Tool messages and assistant tool calls render
    as in `encode_prompt`; the tools themselves were announced in the context, so they are not repeated.
    """
    if not messages:
        return list(context)
    sentinel = [Message(role="user", content="."), Message(role="assistant", content=_SENTINEL)]
    dicts, extra = template_messages(tokenizer, [*sentinel, *messages], tools, tool_choice, announce=False)
    text = tokenizer.apply_chat_template(dicts, tokenize=False, add_generation_prompt=True, **extra)
    if _SENTINEL not in text:
        raise EngineError(
            "the chat template drops assistant messages, so a conversation cannot be continued "
            "from token ids; send the whole conversation as `messages` instead"
        )
    glue_text = text.split(_SENTINEL, 1)[1] + call_prefix(tokenizer, tools, tool_choice)
    glue = list(tokenizer(glue_text, add_special_tokens=False)["input_ids"])
    if glue and context and context[-1] == glue[0]:
        glue = glue[1:]
    return [*context, *glue]


def check_prompt_length(prompt_len: int, max_tokens: int, context_length: int, model_version: str) -> None:
    """Refuse up front what the model cannot hold, naming both numbers and the fix."""
    if prompt_len + max_tokens > context_length:
        if prompt_len >= context_length:  # no max_tokens can help: only a shorter prompt or a longer model
            raise PromptTooLongError(
                f"the prompt alone is {prompt_len} tokens, over the context window of {context_length} "
                f"tokens of {model_version}, so no max_tokens fits. Shorten the prompt or use a model with a longer "
                "context."
            )
        raise PromptTooLongError(
            f"the prompt is {prompt_len} tokens and max_tokens is {max_tokens}: together "
            f"{prompt_len + max_tokens} tokens, over the context window of {context_length} tokens "
            f"of {model_version}. Shorten the prompt or lower SamplingParams.max_tokens to at most "
            f"{context_length - prompt_len}."
        )
