"""Admission that does not wait for the slowest row: the hf engine's running batch, decoded in windows.

Why: `generate` runs a batch until its last row stops, and a row that arrives meanwhile waits for all of it. The
loops are not shaped for that: an MCTS step ends at a newline after ten tokens while a rollout runs sixty-four,
and a game's next move can only be asked once its last one is back. So batches arrived in waves (~14 rows of
64 games in flight) and short rows held their slots for the long ones' steps.

How: the engine keeps one batch running and decodes it a window of `admit_every` steps at a time. A row that
stops is answered at the step it stops (its caller can ask again at once); at the end of each window the
stopped rows leave and the rows that queued meanwhile join, up to `max_batch_size` (a window ends early,
after a quarter of `admit_every`, when rows wait and a slot is free). A newcomer's prompt but
its last token is prefilled into its own keys and values (through the shared-prefix machinery of
hf_prefix.py, so rows with common prefixes compute them once) and left-padded into the running cache; its last
prompt token is then its input at the next step, as each running row's last sampled token is theirs. The
padding is masked and each row's positions count only its real tokens, so a row decodes exactly as in a batch
of its own: greedy tokens are the plain path's, and a seeded row keeps its generator across windows.

Why by hand rather than `generate`: `generate` cannot take rows in mid-call, and transformers' own continuous
batching (`generate_batch`, paged attention) ran at 0.44x static `generate` on CPU
(docs/benchmarks.md). One step is one forward over the running rows with their cache; the per-row sampling
and stopping are hf_rows.py's, as for `generate`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from strop.agents.engines.base import Completion, EngineError
from strop.agents.engines.hf_batching import collect_batch, finish_row
from strop.agents.engines.hf_prefix import KV, PrefixCache, choose_prefixes, compute_prefixes, forward_rows
from strop.agents.engines.hf_rows import Row, RowSampler, TokenUpdate
from strop.agents.engines.hf_streaming import deliver

# Called on the worker with each row that is done: its completion, or the error that ended it.
Resolve = Callable[[Row, Completion | BaseException], None]
# Called on the worker with a step's streamed tokens (thread-safe hand-off to the event loop).
Emit = Callable[[list[tuple[Row, TokenUpdate]]], None]


@dataclass(eq=False)
class Live:
    """A row in the running batch, with what it has sampled so far."""

    row: Row
    version: str
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[dict[int, float]] = field(default_factory=list)
    done: bool = False


class RunningBatch:
    """Rows decoded together and carried from window to window. Touched only on the engine's worker thread."""

    def __init__(self, model: Any, tokenizer: Any, device: Any, eos_ids: list[int], pad_id: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.eos_ids = eos_ids
        self.eos = set(eos_ids)
        self.pad_id = pad_id
        self.live: list[Live] = []
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []  # keys, values: [rows, heads, columns, dim]
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=device)  # [rows, columns]: 1 on real tokens
        self.inputs: list[int] = []  # each row's next input token

    def __len__(self) -> int:
        return len(self.live)

    # ------------------------------------------------------------------------------------------ admission
    def admit(self, rows: list[Row], version: str, prefixes: PrefixCache | None) -> int:
        """Prefill the newcomers' prompts (all but the last token) and add them; returns the tokens that took.

        The last prompt token is run by the next step, so the prompt tokens run in all are this + len(rows).
        """
        keys = [tuple(r.prompt_ids[:-1]) for r in rows]
        if prefixes is not None:
            known, computed = compute_prefixes(
                self.model,
                choose_prefixes([r.prompt_ids for r in rows], prefixes),
                prefixes,
                self.pad_id,
                self.device,
            )
            known, more = compute_prefixes(self.model, keys, prefixes, self.pad_id, self.device, known)
            kvs: list[KV | None] = [known[k] if k else None for k in keys]
            computed += more
        else:  # every prompt in full, none shared (the plain path, for comparison)
            full = [k for k in keys if k]
            got = iter(forward_rows(self.model, full, self.pad_id, self.device) if full else [])
            kvs = [next(got) if k else None for k in keys]
            computed = sum(map(len, full))
        self._join(kvs, [len(k) for k in keys])
        self.live += [Live(r, version) for r in rows]
        self.inputs += [r.prompt_ids[-1] for r in rows]
        return computed

    def _join(self, kvs: list[KV | None], lengths: list[int]) -> None:
        """Left-pad the running cache and the newcomers' keys and values to one width and stack them."""
        old = self.mask.shape[1]
        width = max([old, *lengths])
        dev = self.device
        masks = (
            [torch.cat([self.mask.new_zeros(len(self.live), width - old), self.mask], 1)] if self.live else []
        )
        masks += [torch.tensor([[0] * (width - n) + [1] * n], device=dev) for n in lengths]
        if not self.layers:
            self.layers = _empty_layers(self.model, dev)
        layers = []
        for i, (k_old, v_old) in enumerate(self.layers):
            ks, vs = [_pad_left(k_old, width)], [_pad_left(v_old, width)]
            for kv in kvs:
                if kv is None:  # a one-token prompt: nothing cached yet
                    k = v = k_old.new_zeros(1, k_old.shape[1], 0, k_old.shape[3])
                else:
                    k, v = kv[i]
                ks.append(_pad_left(k, width))
                vs.append(_pad_left(v, width))
            layers.append((torch.cat(ks), torch.cat(vs)))
        self.layers = layers
        self.mask = torch.cat(masks) if masks else self.mask

    def compact(self) -> None:
        """Drop the rows that are done, and the columns that only they had."""
        keep = [i for i, live in enumerate(self.live) if not live.done]
        if len(keep) == len(self.live):
            return
        self.live = [self.live[i] for i in keep]
        self.inputs = [self.inputs[i] for i in keep]
        if not keep:
            self.layers, self.mask = [], self.mask[:0, :0]
            return
        idx = torch.tensor(keep, device=self.device)
        mask = self.mask.index_select(0, idx)
        used = mask.any(0).nonzero()
        start = int(used[0]) if len(used) else mask.shape[1]
        self.mask = mask[:, start:]
        self.layers = [
            (k.index_select(0, idx)[:, :, start:], v.index_select(0, idx)[:, :, start:])
            for k, v in self.layers
        ]

    # ------------------------------------------------------------------------------------------- decoding
    def window(
        self,
        steps: int,
        resolve: Resolve,
        emit: Emit | None,
        interval_s: float,
        admit_early: Callable[[int], bool] | None = None,
    ) -> int:
        """Decode up to `steps` steps, fewer once every row is done or once `admit_early(steps done)` says rows
        are waiting for a slot; returns the tokens sampled."""
        from transformers import DynamicCache

        sampler = RowSampler([live.row for live in self.live], self.device)
        cache = DynamicCache(config=self.model.config)
        for i, (k, v) in enumerate(self.layers):
            cache.update(k, v, i)
        pending: list[tuple[Row, TokenUpdate]] = []
        last_flush, sampled = 0.0, 0
        for step in range(steps):
            if all(live.done for live in self.live):
                break
            if step and admit_early is not None and admit_early(step):
                break
            mask = torch.cat([self.mask, self.mask.new_ones(len(self.live), 1)], 1)
            positions = self.mask.sum(1, keepdim=True)
            inputs = torch.tensor(self.inputs, device=self.device).unsqueeze(1)
            with torch.inference_mode():
                out = self.model(
                    input_ids=inputs, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
                )
            if (
                cache.layers[0].keys.shape[2] != mask.shape[1]
            ):  # e.g. a model that drops its cache in training
                raise EngineError(
                    "the model did not extend its key-value cache while decoding; put it in eval mode, or give "
                    "the engine admit_every=0 (static batches through generate)"
                )
            self.mask = mask
            chosen = sampler(None, out.logits[:, -1, :]).argmax(-1).tolist()
            logps = sampler.logprobs[-1].tolist()
            top = sampler.top[-1] if sampler.top else {}
            finished = []
            for i, live in enumerate(self.live):
                self.inputs[i] = chosen[i]
                if live.done:
                    continue
                sampled += 1
                live.tokens.append(chosen[i])
                live.logprobs.append(logps[i])
                live.top.append(top.get(i, {}))
                if live.row.sink is not None and emit is not None and not live.row.cancelled:
                    pending.append((live.row, (chosen[i], logps[i], top.get(i))))
                if self._stops(live):
                    live.done = True
                    finished.append(live)
            now = time.monotonic()
            if (
                emit is not None
                and pending
                and (finished or now - last_flush >= interval_s or not last_flush)
            ):
                emit(pending)  # the tokens go before the completions that end their streams
                pending, last_flush = [], now
            for live in finished:
                if not live.row.cancelled:
                    resolve(live.row, self._completion(live))
        if emit is not None and pending:
            emit(pending)
        self.layers = [(layer.keys, layer.values) for layer in cache.layers]
        return sampled

    def fail(self, error: BaseException, resolve: Resolve) -> None:
        """A step raised: every row still running gets the error, and the batch starts empty."""
        for live in self.live:
            if not live.done:
                live.done = True
                resolve(live.row, error)
        self.compact()

    def _stops(self, live: Live) -> bool:
        s = live.row.sampling
        if live.row.cancelled or live.tokens[-1] in self.eos or len(live.tokens) >= s.max_tokens:
            return True
        if s.stop:
            window = (
                max(map(len, s.stop)) + 4
            )  # a stop string of m characters spans at most m tokens (+ slack)
            tail = self.tokenizer.decode(live.tokens[-window:], skip_special_tokens=True)
            return any(stop in tail for stop in s.stop if stop)
        return False

    def _completion(self, live: Live) -> Completion:
        return finish_row(
            self.tokenizer,
            live.row,
            live.tokens,
            live.logprobs,
            live.top,
            eos_ids=self.eos_ids,
            model_version=live.version,
        )


def _empty_layers(model: Any, device: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, keys and values of no rows and no columns, shaped as the model's attention makes them."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    dtype = next(model.parameters()).dtype
    empty = torch.zeros(0, heads, 0, dim, dtype=dtype, device=device)
    return [(empty, empty) for _ in range(cfg.num_hidden_layers)]


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    gap = width - t.shape[2]
    return torch.cat([t.new_zeros(t.shape[0], t.shape[1], gap, t.shape[3]), t], 2) if gap else t


# --------------------------------------------------------------------------------------------- the scheduler
async def run_windows(engine: Any, queue: asyncio.Queue[Row]) -> None:
    """The hf engine's batcher with admission: a running batch for as long as rows keep it busy.

    It holds the engine's gate while the batch runs, so a `reload` waits for the running rows (a row never
    mixes two sets of weights); while a reload waits, no row is admitted, so the batch drains.
    """
    loop = asyncio.get_running_loop()

    def resolve(row: Row, result: Completion | BaseException) -> None:  # on the worker
        if isinstance(result, Completion):
            engine.stats.completions += 1
            engine.stats.tokens_generated += len(result.token_ids)
        loop.call_soon_threadsafe(_settle, row, result)

    while True:
        newcomers = await collect_batch(queue, engine.max_batch_size, engine.batch_wait_s)
        if not newcomers:
            continue
        async with engine._gate_lock():
            emit = functools.partial(loop.call_soon_threadsafe, deliver, engine.model_version)
            batch = RunningBatch(
                engine.model, engine.tokenizer, engine.device, engine._eos_ids, engine.tokenizer.pad_token_id
            )
            while newcomers or len(batch):
                work = functools.partial(_step_window, engine, batch, queue, newcomers, resolve, emit)
                await loop.run_in_executor(engine._executor, work)
                await asyncio.sleep(0)  # callers answered in that window queue their next request first
                free = engine.max_batch_size - len(batch)
                newcomers = [] if engine._draining else _drain(queue, free)


def _step_window(
    engine: Any,
    batch: RunningBatch,
    queue: asyncio.Queue[Row],
    newcomers: list[Row],
    resolve: Resolve,
    emit: Emit,
) -> None:
    """On the worker: admit the newcomers, decode one window, drop the rows that are done."""
    newcomers = [r for r in newcomers if not r.future.done()]
    try:
        if newcomers:
            sharing = engine.prefix_cache if engine.shared_prefixes else None
            computed = batch.admit(newcomers, engine.model_version, sharing)
            engine.stats.prefill_tokens_requested += sum(len(r.prompt_ids) for r in newcomers)
            engine.stats.prefill_tokens_computed += computed + len(newcomers)
            engine.stats.batches += 1
            engine.stats.rows += len(newcomers)
            newcomers = []
        engine.stats.windows += 1
        engine.stats.window_rows += len(batch)
        streaming = any(live.row.sink is not None for live in batch.live)
        batch.window(
            engine.admit_every,
            resolve,
            emit if streaming else None,
            engine.stream_interval_s,
            functools.partial(_admit_early, engine, batch, queue),
        )
    except Exception as e:  # handed to every waiting caller, never swallowed
        error = e if isinstance(e, EngineError) else EngineError(f"generation failed: {e!r}")
        for row in newcomers:  # not admitted
            resolve(row, error)
        batch.fail(error, resolve)
    batch.compact()


def _admit_early(engine: Any, batch: RunningBatch, queue: asyncio.Queue[Row], steps: int) -> bool:
    """On the worker, after each step: end the window early when rows wait and a slot is free, once a quarter of
    the window has run (an admission copies the running cache, so not after every step). Reading the queue's
    length from this thread is a heuristic only: a row missed here joins at the window's end."""
    if engine._draining or steps < max(1, engine.admit_every // 4) or not queue.qsize():
        return False
    return sum(not live.done for live in batch.live) < engine.max_batch_size


def _drain(queue: asyncio.Queue[Row], most: int) -> list[Row]:
    rows: list[Row] = []
    while len(rows) < most and not queue.empty():
        row = queue.get_nowait()
        if not row.future.done():
            rows.append(row)
    return rows


def _settle(row: Row, result: Completion | BaseException) -> None:
    """On the event loop: answer the row's caller (unless it went away)."""
    if row.future.done():
        return
    if isinstance(result, BaseException):
        row.future.set_exception(result)
    else:
        row.future.set_result(result)
