"""The rows of an hf engine batch and the per-row hooks `generate` calls at every decoding step.

`RowSampler` (a logits processor) draws each row's token with the row's own temperature, top-p and generator;
`RowStop` (a stopping criterion) ends each row at its own max_tokens, stop strings or cancellation, and hands
each streamed row its new token as soon as the step that drew it is done. See hf.py for the guarantees.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria

from strop.agents.engines.base import Completion, SamplingParams

# One step's news for one streamed row: (token id, its log-prob, its top-k {token id: log-prob} or None).
TokenUpdate = tuple[int, float, dict[int, float] | None]


@dataclass(eq=False)
class Row:
    """One completion to sample: a request expands into `n` rows."""

    prompt_ids: list[int]
    sampling: SamplingParams
    seed: int
    future: asyncio.Future[Completion] = field(repr=False)
    # Streamed rows: called on the event loop with the model version and each step's new token.
    sink: Callable[[str, TokenUpdate], None] | None = field(default=None, repr=False)
    # Set from the event loop when the caller goes away; the worker stops decoding the row at its next step.
    cancelled: bool = False
    # The row's random stream, made on its first step and kept while it decodes across admission windows.
    generator: Any = field(default=None, repr=False)


def length_groups(rows: list[Row]) -> list[list[Row]]:
    """Split a batch into groups of like length, shortest first.

    `generate` runs a batch until its last row stops, so a 10-token step that ends at a newline, batched with
    a 64-token rollout, holds its slot for 54 empty steps. Rows are grouped by whether they stop at a string
    and by their max_tokens' power of two; a workload of one kind (best-of-N) stays one batch, a mixed one
    (MCTS: steps and rollouts) runs as a few, and the short group's callers get their answers first.
    """
    groups: dict[tuple[bool, int], list[Row]] = {}
    for r in rows:
        groups.setdefault((bool(r.sampling.stop), r.sampling.max_tokens.bit_length()), []).append(r)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[1], not k[0]))]


class RowSampler(LogitsProcessor):
    """A logits processor that samples each row with its own temperature, top-p and generator.

    It returns a mask that is 0 at the chosen token and -inf elsewhere, so `generate` in greedy mode picks
    exactly the token drawn here, and it records that token's log-prob (and the top-k, for rows that ask) on
    the way.
    """

    def __init__(self, rows: list[Row], device: Any) -> None:
        temps = [r.sampling.temperature for r in rows]
        self.temps = torch.tensor([t if t > 0 else 1.0 for t in temps], device=device).unsqueeze(1)
        self.top_p = torch.tensor([r.sampling.top_p for r in rows], device=device).unsqueeze(1)
        self.sampled = [i for i, t in enumerate(temps) if t > 0]
        self.any_top_p = any(r.sampling.top_p < 1.0 for r in rows)
        self.generators = {}
        for i in self.sampled:
            if rows[i].generator is None:
                rows[i].generator = torch.Generator(device=device)
                rows[i].generator.manual_seed(rows[i].seed)
            self.generators[i] = rows[i].generator
        self.want_top = {i: r.sampling.top_logprobs for i, r in enumerate(rows) if r.sampling.top_logprobs}
        self.logprobs: list[Any] = []
        self.top: list[dict[int, dict[int, float]]] = []  # per step: row -> {token id: log-prob}

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        scores = scores.float()
        if not self.sampled:
            # All greedy: generate's own argmax picks the same tokens, so skip the mask; log-prob of the
            # chosen token only (logit - logsumexp), not a full log_softmax over the vocabulary.
            chosen = scores.argmax(dim=-1, keepdim=True)
            self.logprobs.append((scores.gather(1, chosen).squeeze(1) - scores.logsumexp(dim=-1)).cpu())
            if self.want_top:
                self.top.append(
                    {i: _topk(torch.log_softmax(scores[i], dim=-1), k) for i, k in self.want_top.items()}
                )
            return scores
        logits = scores / self.temps
        if self.any_top_p:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(dim=-1)
            # drop a token once the mass before it already reaches top_p (the top token always stays)
            drop = (probs.cumsum(dim=-1) - probs) >= self.top_p
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
        logp = torch.log_softmax(logits, dim=-1)
        chosen = scores.argmax(dim=-1)
        greedy_rows = [i for i in range(scores.shape[0]) if i not in self.generators]
        if greedy_rows:  # greedy rows report log-probs under the raw distribution
            idx = torch.tensor(greedy_rows, device=scores.device)
            logp[idx] = torch.log_softmax(scores[idx], dim=-1)
        for i, g in self.generators.items():
            chosen[i] = torch.multinomial(logp[i].exp(), 1, generator=g)[0]
        self.logprobs.append(logp.gather(1, chosen.unsqueeze(1)).squeeze(1).cpu())
        if self.want_top:
            self.top.append({i: _topk(logp[i], k) for i, k in self.want_top.items()})
        mask = torch.full_like(scores, float("-inf"))
        return mask.scatter_(1, chosen.unsqueeze(1), 0.0)


def _topk(logp: Any, k: int) -> dict[int, float]:
    values, ids = logp.topk(k)
    return dict(zip(ids.tolist(), values.tolist(), strict=True))


class RowStop(StoppingCriteria):
    """Stopping criterion per row: its own max_tokens, stop strings and cancellation (transformers' are per
    batch). Called once per step right after the new tokens are appended, so it is also where streamed rows
    are handed their token: `emit` (thread-safe, to the event loop) gets the step's updates in one call.
    """

    def __init__(
        self,
        rows: list[Row],
        prompt_width: int,
        tokenizer: Any,
        device: Any,
        *,
        sampler: RowSampler,
        eos_ids: set[int],
        emit: Callable[[list[tuple[Row, TokenUpdate]]], None] | None = None,
        interval_s: float = 0.0,
    ) -> None:
        self.rows = rows
        self.width = prompt_width
        self.tokenizer = tokenizer
        self.max_tokens = torch.tensor([r.sampling.max_tokens for r in rows], device=device)
        # A stop string of m characters spans at most m tokens (+ slack for tokens that decode to nothing).
        self.stops = {
            i: (r.sampling.stop, max(map(len, r.sampling.stop)) + 4)
            for i, r in enumerate(rows)
            if r.sampling.stop
        }
        self.sampler = sampler
        self.eos_ids = eos_ids
        self.emit = emit
        self.streamed = [i for i, r in enumerate(rows) if r.sink is not None] if emit else []
        self.finished = [False] * len(rows)  # a streamed row's stream has ended (later tokens are padding)
        self.interval_s = interval_s
        self._pending: list[tuple[Row, TokenUpdate]] = []
        self._last_flush = 0.0
        self._first = True

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        n = input_ids.shape[1] - self.width
        done = self.max_tokens <= n
        for i, (stops, window) in self.stops.items():
            if done[i]:
                continue
            tail = self.tokenizer.decode(
                input_ids[i, max(self.width, input_ids.shape[1] - window) :], skip_special_tokens=True
            )
            if any(s in tail for s in stops):
                done[i] = True
        for i, row in enumerate(self.rows):
            if row.cancelled:
                done[i] = True
        if self.streamed:
            self._emit(input_ids, done)
        return done

    def _emit(self, input_ids: Any, done: Any) -> None:
        last = input_ids[:, -1].tolist()
        logps = self.sampler.logprobs[-1].tolist()
        top = self.sampler.top[-1] if self.sampler.top else {}
        flags = done.tolist()
        updates = []
        for i in self.streamed:
            if self.finished[i]:
                continue
            row = self.rows[i]
            if not row.cancelled:
                updates.append((row, (last[i], logps[i], top.get(i))))
            if flags[i] or last[i] in self.eos_ids:
                self.finished[i] = True
        self._pending += updates
        # The first tokens go out at once (time to first token); later ones at most every interval_s, so that a
        # fast model does not cost the event loop one hand-off per client per step (it shares the GIL with us).
        now = time.monotonic()
        if self._first or now - self._last_flush >= self.interval_s:
            self._first = False
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Hand what is pending to the event loop; `_run_batch` calls it once more after the last step."""
        if self._pending and self.emit is not None:
            self.emit(self._pending)
            self._pending = []
        self._last_flush = time.monotonic() if now is None else now
