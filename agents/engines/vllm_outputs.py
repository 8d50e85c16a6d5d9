"""Translating between strop's requests and completions and vLLM's sampling parameters and outputs.

The conversions keep the vllm backend's results identical in form to the hf backend's: vLLM receives token
ids, a request's n, seed, stop strings and log-prob wishes map onto one `SamplingParams`, and each output
becomes a `Completion` with the sampled token's log-prob per position (after temperature and top-p) and the
top-k where asked. vLLM is never imported at module level here either.
"""

from __future__ import annotations

from typing import Any

from strop.agents.engines.base import Completion, EngineError, FinishReason, GenerationRequest


def sampling_params(vllm: Any, request: GenerationRequest, *, delta: bool = False) -> Any:
    """vLLM's SamplingParams for a request; `delta` streams each step's new tokens instead of one final output."""
    from vllm.sampling_params import RequestOutputKind

    s = request.sampling
    return vllm.SamplingParams(
        n=s.n,
        temperature=s.temperature,
        top_p=s.top_p,
        max_tokens=s.max_tokens,
        stop=list(s.stop) or None,
        seed=s.seed,
        logprobs=max(1, s.top_logprobs) if s.logprobs else None,
        # FINAL_ONLY: one message per request; DELTA: each step's new tokens, for streaming
        output_kind=RequestOutputKind.DELTA if delta else RequestOutputKind.FINAL_ONLY,
    )


def completion_of(
    out: Any, prompt_ids: list[int], version: str, want_logprobs: bool, top_k: int = 0
) -> Completion:
    """A finished vLLM output as a Completion; an output vLLM ended any other way (aborted) is an EngineError."""
    reasons = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}
    if out.finish_reason not in reasons:
        raise EngineError(
            f"vLLM ended a completion of {version} with finish reason {out.finish_reason!r} "
            f"(stop reason {out.stop_reason!r}) instead of finishing it; see the vLLM log above"
        )
    token_ids = list(out.token_ids)
    logprobs = None
    if want_logprobs:
        # Each position maps token id -> Logprob for the sampled token plus the top-1; keep the sampled one.
        logprobs = [float(pos[tok].logprob) for tok, pos in zip(token_ids, out.logprobs, strict=True)]
    return Completion(
        text=out.text,
        prompt_token_ids=prompt_ids,
        token_ids=token_ids,
        logprobs=logprobs,
        finish_reason=reasons[out.finish_reason],
        matched_stop=out.stop_reason if isinstance(out.stop_reason, str) else None,
        model_version=version,
        top_logprobs=[top_of(pos, top_k) for pos in out.logprobs] if want_logprobs and top_k else None,
    )


def top_of(position: Any, k: int) -> dict[int, float]:
    """The k most likely tokens of one position (vLLM adds the sampled token, ranked, when it is not among them)."""
    ranked = sorted(position.items(), key=lambda kv: kv[1].rank if kv[1].rank is not None else 1 << 30)
    return {int(t): float(lp.logprob) for t, lp in ranked[:k]}
