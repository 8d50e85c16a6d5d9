"""The Engine contract: what every model backend (hf, openai, vllm) accepts and returns.

Completions carry token ids and log-probs, not only text, because re-tokenizing text before training is a
known source of drift between what the model sampled and what the trainer optimises.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator


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


class Message(BaseModel):
    """One chat message, in the OpenAI / Hugging Face chat format."""

    role: str = Field(description="system, user or assistant.")
    content: str


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
        "loops use it so earlier turns are never re-tokenized. Needs a local tokenizer (hf, vllm).",
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
    if not getattr(tokenizer, "chat_template", None):
        raise EngineError(
            f"{model_path} has no chat template, so it cannot take `messages`: "
            "send a raw `prompt` instead, or add a chat_template to its tokenizer_config.json"
        )
    if request.context_token_ids is not None:
        return continuation_ids(tokenizer, request.context_token_ids, request.messages or [])
    text = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in request.messages or []],
        tokenize=False,
        add_generation_prompt=not request.continue_final,
        continue_final_message=request.continue_final,
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


_SENTINEL = "\x00strop-turn-end\x00"


def continuation_ids(tokenizer: Any, context: list[int], messages: list[Message]) -> list[int]:
    """`context` verbatim, then the chat template's text that follows an assistant turn: the turn's end, the new
    messages and the next assistant header.

    The template is rendered around a sentinel assistant message and only what follows the sentinel is
    tokenized, so the earlier turns keep the exact ids they were sampled with. When the context already ends
    with the end-of-turn token (a completion that stopped at EOS), the template's copy of it is dropped. No
    messages: the context itself, to be continued as it stands.
    """
    if not messages:
        return list(context)
    text = tokenizer.apply_chat_template(
        [
            {"role": "user", "content": "."},
            {"role": "assistant", "content": _SENTINEL},
            *({"role": m.role, "content": m.content} for m in messages),
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    if _SENTINEL not in text:
        raise EngineError(
            "the chat template drops assistant messages, so a conversation cannot be continued "
            "from token ids; send the whole conversation as `messages` instead"
        )
    glue = list(tokenizer(text.split(_SENTINEL, 1)[1], add_special_tokens=False)["input_ids"])
    if glue and context and context[-1] == glue[0]:
        glue = glue[1:]
    return [*context, *glue]


def check_prompt_length(prompt_len: int, max_tokens: int, context_length: int, model_version: str) -> None:
    """Refuse up front what the model cannot hold, naming both numbers and the fix."""
    if prompt_len + max_tokens > context_length:
        raise PromptTooLongError(
            f"the prompt is {prompt_len} tokens and max_tokens is {max_tokens}: together "
            f"{prompt_len + max_tokens} tokens, over the context window of {context_length} tokens "
            f"of {model_version}. Shorten the prompt or lower SamplingParams.max_tokens to at most "
            f"{max(context_length - prompt_len, 0)}."
        )
