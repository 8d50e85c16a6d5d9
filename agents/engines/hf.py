"""The `hf` backend: transformers on CPU or GPU, with concurrent requests coalesced into batches.

Why a queue: the loops run hundreds of episodes as coroutines, each asking for one completion at a time. One
forward pass over 64 rows costs little more than one over a single row, so the engine collects the rows that
arrive within a short window (`batch_wait_ms`, at most `max_batch_size`) and decodes them together on a single
worker thread. torch releases the GIL during the pass, so the event loop keeps scheduling episodes meanwhile.
The batch keeps running: every `admit_every` decoding steps the rows that are done leave and the rows queued
meanwhile join (hf_running.py), so no row waits for the slowest one; `admit_every=0` gives static batches, one
`generate` call each.

Why per-row sampling in a logits processor: requests in one batch may differ in temperature, top-p, seed and
`max_tokens`. `RowSampler` draws each row's next token with that row's own parameters and `torch.Generator`,
records its log-prob, and hands `generate` a one-hot mask that greedy decoding then follows. So a mixed batch
is still one `generate` call, and a seeded request draws from its own random stream whatever else shares its
batch.

What is guaranteed:
- Seeds: a request with `seed=s` samples its k-th completion from a generator seeded with `s + k`. The same
  request on the same model, device and dtype gives the same completions. Batched matrix products may round
  differently for different batch shapes, so a near-tie between two tokens can, rarely, resolve differently
  when the request shares its batch with other prompts of other lengths.
- Log-probs: of the distribution the token was actually drawn from, that is after temperature and top-p
  (what RL objectives want). Greedy rows (temperature 0) report the log-prob under the raw model distribution
  (temperature 1), since the greedy distribution is degenerate.
- Token ids include the end-of-sequence token when the model emitted one (training then learns to stop); the
  text never includes it. With a stop string, text ends before the stop string and token ids end with the
  token that completed it (vLLM does the same).
- Shared prefixes are computed once per batch and kept for later ones (`prefix_cache_tokens`, an LRU; see
  hf_prefix.py), giving the plain path's greedy tokens; `shared_prefixes=False` runs every prompt in full.

This module is the engine: its queues, locks and lifecycle. Reading weights is in hf_loading.py, collecting
and decoding a batch in hf_batching.py (with the per-row hooks of hf_rows.py), and carrying streamed tokens
to their clients in hf_streaming.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from strop.agents.engines.base import (
    Completion,
    EngineError,
    GenerationRequest,
    as_requests,
    check_prompt_length,
    encode_prompt,
)
from strop.agents.engines.hf_batching import cancel_rows, run_static
from strop.agents.engines.hf_loading import eos_ids, load_model, swap_adapter
from strop.agents.engines.hf_prefix import PrefixCache, supports_prefixes
from strop.agents.engines.hf_rows import Row
from strop.agents.engines.hf_running import run_windows
from strop.agents.engines.hf_streaming import Queued, end_of_row, merge_events, to_sink
from strop.agents.engines.streaming import StreamEvent, TextDeltas

__all__ = ["EngineStats", "HFEngine"]

log = logging.getLogger(__name__)


@dataclass
class EngineStats:
    """Counters for progress bars and for checking that coalescing really batches."""

    requests: int = 0
    completions: int = 0
    batches: int = 0
    rows: int = 0
    tokens_generated: int = 0
    adapter_swaps: int = 0  # reloads done as a LoRA swap on the base in memory
    # With admission (admit_every > 0) a batch is one admission of rows into the running batch; its decoding
    # windows and the rows running in each are counted here (mean_running_rows: how full the batch stayed).
    # A static batch counts as one window of its rows.
    windows: int = 0
    window_rows: int = 0
    # Prompt tokens of the rows decoded, and those the model actually ran (shared prefixes run once).
    prefill_tokens_requested: int = 0
    prefill_tokens_computed: int = 0

    @property
    def prefill_ratio(self) -> float:
        """Prompt tokens run ÷ prompt tokens asked (1.0 without shared prefixes, 0.0 before any)."""
        return self.prefill_tokens_computed / max(self.prefill_tokens_requested, 1)

    @property
    def mean_batch_size(self) -> float:
        return self.rows / self.batches if self.batches else 0.0

    @property
    def mean_running_rows(self) -> float:
        """Rows decoded together per window, on average (a static batch is one window)."""
        return self.window_rows / self.windows if self.windows else 0.0


@dataclass
class _LoopState:
    """Queue and batcher task of one event loop (asyncio queues cannot cross loops)."""

    queue: asyncio.Queue[Row]
    task: asyncio.Task[None]


class HFEngine:
    """A transformers model behind the Engine protocol; see the module docstring for the guarantees."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        adapter_path: str | Path | None = None,
        max_batch_size: int = 64,
        batch_wait_ms: float = 10,
        device: str | None = None,
        dtype: str | None = None,
        model_version: str | None = None,
        shared_prefixes: bool = True,
        prefix_cache_tokens: int = 4096,
        admit_every: int = 16,
    ) -> None:
        self._init_runtime(
            max_batch_size, batch_wait_ms, device, dtype, shared_prefixes, prefix_cache_tokens, admit_every
        )
        self._load(Path(model_path), Path(adapter_path) if adapter_path else None, model_version)

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        *,
        model_version: str,
        max_batch_size: int = 64,
        batch_wait_ms: float = 10,
        shared_prefixes: bool = True,
        admit_every: int = 16,
    ) -> HFEngine:
        """Serve a model object that is already loaded, without copying it (e.g. the one a trainer is updating:
        every batch then samples from the weights as they are at that moment, so no weight sync is needed).

        The engine takes the model as it is (device, dtype, train/eval mode, PEFT wrapper) and does not change the
        tokenizer's padding side (it pads rows itself). `reload` replaces the model with one loaded from disk.
        Prefixes are shared within a batch but kept for no later one: the trainer changes the weights under them.
        """
        engine = cls.__new__(cls)
        engine._init_runtime(max_batch_size, batch_wait_ms, None, None, shared_prefixes, 0, admit_every)
        param = next(model.parameters())
        source = getattr(getattr(model, "config", None), "_name_or_path", "") or "<in-memory model>"
        engine._adopt(model, tokenizer, param.device, param.dtype, Path(source), None, model_version)
        engine._owns_model = False  # a trainer's model: never unmerge or unwrap it here
        return engine

    def _init_runtime(
        self,
        max_batch_size: int,
        batch_wait_ms: float,
        device: str | None,
        dtype: str | None,
        shared_prefixes: bool,
        prefix_cache_tokens: int,
        admit_every: int,
    ) -> None:
        if max_batch_size < 1:
            raise EngineError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if batch_wait_ms < 0:
            raise EngineError(f"batch_wait_ms must be 0 or more, got {batch_wait_ms}")
        if prefix_cache_tokens < 0:
            raise EngineError(f"prefix_cache_tokens must be 0 or more, got {prefix_cache_tokens}")
        if admit_every < 0:
            raise EngineError(
                f"admit_every must be 0 (static batches) or more decoding steps, got {admit_every}"
            )
        self.admit_every = admit_every
        self._draining = 0  # reloads waiting: the running batch admits no one until they are done
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000
        self.shared_prefixes = shared_prefixes
        # Touched only on the worker thread, like the model.
        self.prefix_cache = PrefixCache(prefix_cache_tokens)
        # Streamed tokens reach the event loop at most this often after the first (one hand-off per step for a
        # model slower than this): on a fast model, per-step hand-offs to 64 streams cost more than decoding.
        self.stream_interval_s = 0.05
        self._device_arg = device
        self._dtype_arg = dtype
        self.stats = EngineStats()
        # One worker thread: batches run one after another and never race on the model.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="strop-hf")
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        self._gate: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._closed = False

    # ----------------------------------------------------------------------------------------------- loading
    def _load(self, model_path: Path, adapter_path: Path | None, model_version: str | None) -> None:
        model_path = model_path.expanduser()
        adapter_path = adapter_path.expanduser() if adapter_path is not None else None
        loaded = load_model(model_path, adapter_path, self._device_arg, self._dtype_arg)
        self._adopt(
            loaded.model,
            loaded.tokenizer,
            loaded.device,
            loaded.dtype,
            model_path,
            adapter_path,
            model_version,
        )
        self._owns_model = True

    def _adopt(
        self,
        model: Any,
        tokenizer: Any,
        device: torch.device,
        dtype: torch.dtype,
        model_path: Path,
        adapter_path: Path | None,
        model_version: str | None,
    ) -> None:
        eos = eos_ids(model, tokenizer, model_path)
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.model_path = model_path
        self.adapter_path = adapter_path
        self._eos_ids = eos
        self._prefixes_ok = supports_prefixes(model)
        self.prefix_cache.clear()  # keys and values of the old weights
        self.context_length: int = int(
            getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
        )
        self._model_version = model_version or (str(adapter_path) if adapter_path else str(model_path))

    @property
    def model_version(self) -> str:
        return self._model_version

    async def reload(
        self, model_path: str | Path, adapter_path: str | Path | None = None, model_version: str | None = None
    ) -> None:
        """Swap in new weights (after a promotion). Waits for the batch in flight; queued rows use the new ones.

        An adapter on the base already loaded (or the bare base after an adapter) is a LoRA swap: the old
        adapter is unmerged and the new one merged, without reading the base again. Anything else loads anew.
        """
        base = Path(model_path).expanduser()
        adapter = Path(adapter_path).expanduser() if adapter_path else None
        swap = (
            getattr(self, "_owns_model", False)
            and base.resolve() == self.model_path.resolve()
            and (adapter is not None or self.adapter_path is not None)
        )
        work = functools.partial(self._swap_adapter if swap else self._load, base, adapter, model_version)
        self._draining += 1
        try:
            async with self._gate_lock():
                await asyncio.get_running_loop().run_in_executor(self._executor, work)
        finally:
            self._draining -= 1

    def _swap_adapter(self, model_path: Path, adapter_path: Path | None, model_version: str | None) -> None:
        """On the worker: unmerge the adapter in use (exact up to float rounding) and merge the new one."""
        model = swap_adapter(self.model, adapter_path, self.device)
        self.model = model
        self.prefix_cache.clear()
        self.adapter_path = adapter_path
        self._model_version = model_version or str(adapter_path or model_path)
        self.stats.adapter_swaps += 1

    # ---------------------------------------------------------------------------------------------- prompts
    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """Token ids of the prompt: the chat template for messages, the raw text (with BOS if any) for prompts."""
        return encode_prompt(self.tokenizer, request, self.model_path)

    def _check_length(self, prompt_len: int, max_tokens: int) -> None:
        check_prompt_length(prompt_len, max_tokens, self.context_length, self.model_version)

    # ------------------------------------------------------------------------------------------- generation
    async def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        """Queue every row of every request, then wait for all; rows from concurrent callers share batches.

        A caller that is cancelled (a client that went away) takes its rows out: those not started are skipped,
        those being decoded stop at the next step.
        """
        requests = as_requests(requests)
        encoded = [self._encode(r) for r in requests]  # validate everything before queueing anything
        rows = [self._queue_rows(r, ids) for r, ids in zip(requests, encoded, strict=True)]
        self.stats.requests += len(requests)
        try:
            return [list(await asyncio.gather(*(row.future for row in rs))) for rs in rows]
        except asyncio.CancelledError:
            cancel_rows([row for rs in rows for row in rs])
            raise

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """Yield each choice's tokens as the batch that decodes them draws them; see `streaming.StreamEvent`.

        The rows join the same batches as `generate`'s (same seeds, same sampler), so the same request gives the
        same text streamed or not. Closing the iterator (a client disconnect) stops decoding its rows.
        """
        [request] = as_requests([request])
        ids = self._encode(request)
        events: asyncio.Queue[Queued] = asyncio.Queue()
        rows = self._queue_rows(request, ids, sink=events.put_nowait)
        self.stats.requests += 1
        texts = [TextDeltas(self.tokenizer, set(self._eos_ids), request.sampling.stop) for _ in rows]
        want_lp, want_top = request.sampling.logprobs, request.sampling.top_logprobs > 0
        left = len(rows)
        try:
            while left:
                items = [await events.get()]
                while not events.empty():  # a slow reader gets several steps in one event, not a backlog
                    items.append(events.get_nowait())
                for event in merge_events(items, rows, texts, want_lp, want_top):
                    if event.completion is not None:
                        left -= 1
                    yield event
        finally:
            cancel_rows(rows)

    def _encode(self, request: GenerationRequest) -> list[int]:
        if self._closed:
            raise EngineError("this engine is closed: create a new one with agents.engines.load_engine(...)")
        ids = self.prompt_ids(request)
        self._check_length(len(ids), request.sampling.max_tokens)
        return ids

    def _queue_rows(
        self,
        request: GenerationRequest,
        ids: list[int],
        sink: Callable[[Queued], None] | None = None,
    ) -> list[Row]:
        loop = asyncio.get_running_loop()
        state = self._loop_state(loop)
        s = request.sampling
        base_seed = s.seed if s.seed is not None else random.getrandbits(62)
        rows = []
        for k in range(s.n):
            fut: asyncio.Future[Completion] = loop.create_future()
            row = Row(ids, s, base_seed + k, fut)
            if sink is not None:
                row.sink = functools.partial(to_sink, sink, k)
                fut.add_done_callback(functools.partial(end_of_row, sink, k))
            state.queue.put_nowait(row)
            rows.append(row)
        return rows

    def _gate_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._gate.get(loop)
        if lock is None:
            lock = self._gate[loop] = asyncio.Lock()
        return lock

    def _loop_state(self, loop: asyncio.AbstractEventLoop) -> _LoopState:
        state = self._loops.get(loop)
        if state is None or state.task.done():
            queue: asyncio.Queue[Row] = asyncio.Queue()
            state = _LoopState(queue, loop.create_task(self._batch_loop(queue), name="strop-hf-batcher"))
            self._loops[loop] = state
        return state

    async def _batch_loop(self, queue: asyncio.Queue[Row]) -> None:
        if self.admit_every and self._prefixes_ok:
            await run_windows(self, queue)  # admission at every window (hf_running.py)
        else:
            await run_static(self, queue)  # a batch runs until its last row stops (hf_batching.py)

    async def close(self) -> None:
        """Stop the batchers and the worker; waiting callers get an EngineError rather than hanging."""
        self._closed = True
        for state in list(self._loops.values()):
            state.task.cancel()
            while not state.queue.empty():
                row = state.queue.get_nowait()
                if not row.future.done():
                    row.future.set_exception(EngineError("the engine was closed before this request ran"))
        self._loops.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
