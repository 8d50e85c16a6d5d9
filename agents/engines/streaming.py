"""Token streams: what an engine that can stream yields, and the text deltas a client sees.

An engine streams from its own decode loop (one event per decoding step and row), never by cutting a finished
completion into pieces, so the first token reaches the client while the rest are still being computed. The
last event of each choice carries the finished `Completion`, the same object `generate` would have returned,
so a stream and a non-streamed call with the same seed end in the same text and token ids.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from strop.agents.engines.base import Completion, GenerationRequest


@dataclass(slots=True)
class StreamEvent:
    """New tokens of one choice. A dataclass, not a pydantic model: one is built per token on the hot path."""

    index: int  # which of the request's n choices
    model_version: str  # the weights that produced these tokens
    text: str = ""  # new text, safe to show: never part of a stop string or half a UTF-8 character
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None
    completion: Completion | None = None  # set on the choice's last event only


@runtime_checkable
class StreamingEngine(Protocol):
    """An engine that can stream one request's tokens as they are decoded (hf, vllm)."""

    @property
    def model_version(self) -> str: ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]: ...


class TextDeltas:
    """Incremental detokenization of one choice, so the streamed text always prefixes the final text.

    The ids so far are decoded whole (a token's text can depend on its neighbours), then held back: an
    unfinished UTF-8 character (decoded as U+FFFD), text at or after a stop string, and a tail that could be the
    start of one. The final completion's text then always extends what was sent.
    """

    def __init__(self, tokenizer: Any, eos_ids: set[int], stops: list[str]) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.stops = [s for s in stops if s]
        self.ids: list[int] = []
        self.sent = ""
        self.ended = False

    def push(self, token_ids: list[int]) -> str:
        """The text that became safe to show after `token_ids`."""
        for t in token_ids:
            if t in self.eos_ids:
                self.ended = True
            if not self.ended:
                self.ids.append(t)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).rstrip("\ufffd")
        if self.stops:
            hits = [text.find(s) for s in self.stops if s in text]
            if hits:
                text = text[: min(hits)]
            else:
                hold = max(
                    (k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0
                )
                text = text[: len(text) - hold]
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""  # nothing new, or a decode that rewrote earlier text: wait for the final text
        delta, self.sent = text[len(self.sent) :], text
        return delta

    def finish(self, final_text: str) -> str:
        """The rest of the final text; what was sent is always its prefix (see the class docstring)."""
        if not final_text.startswith(self.sent):
            raise RuntimeError(
                f"streamed text {self.sent!r} is not a prefix of the final text {final_text!r}: a tokenizer whose "
                "decode of a prefix differs from the prefix of its decode; please report it with the model"
            )
        delta, self.sent = final_text[len(self.sent) :], final_text
        return delta
