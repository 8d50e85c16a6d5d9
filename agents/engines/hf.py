"""The `hf` backend: transformers on CPU or GPU, with concurrent requests coalesced into batched `generate`.

Why a queue: the loops run hundreds of episodes as coroutines, each asking for one completion at a time. One
forward pass over 64 rows costs little more than one over a single row, so the engine collects the rows that
arrive within a short window (`batch_wait_ms`, at most `max_batch_size`) and decodes them together on a single
worker thread. torch releases the GIL during the pass, so the event loop keeps scheduling episodes meanwhile.

Why per-row sampling in a logits processor: requests in one batch may differ in temperature, top-p, seed and
`max_tokens`. `_RowSampler` draws each row's next token with that row's own parameters and `torch.Generator`,
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
"""

from __future__ import annotations

import asyncio
import logging
import random
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria

from strop.agents.engines.base import (
    Completion,
    EngineError,
    FinishReason,
    GenerationRequest,
    SamplingParams,
    as_requests,
    check_prompt_length,
    encode_prompt,
)

log = logging.getLogger(__name__)

_MISSING_MODEL_FIX = (
    "build the tiny model with `strop models build-tiny`, import SmolLM2 with `strop models import smollm2`, "
    "or pass a local Hugging Face model folder (one with config.json and tokenizer files)"
)


@dataclass
class EngineStats:
    """Counters for progress bars and for checking that coalescing really batches."""

    requests: int = 0
    completions: int = 0
    batches: int = 0
    rows: int = 0
    tokens_generated: int = 0

    @property
    def mean_batch_size(self) -> float:
        return self.rows / self.batches if self.batches else 0.0


@dataclass
class _Row:
    """One completion to sample: a request expands into `n` rows."""

    prompt_ids: list[int]
    sampling: SamplingParams
    seed: int
    future: asyncio.Future[Completion] = field(repr=False)


@dataclass
class _LoopState:
    """Queue and batcher task of one event loop (asyncio queues cannot cross loops)."""

    queue: asyncio.Queue[_Row]
    task: asyncio.Task[None]


def length_groups(rows: list[_Row]) -> list[list[_Row]]:
    """Split a batch into groups of like length, shortest first.

    `generate` runs a batch until its last row stops, so a 10-token step that ends at a newline, batched with
    a 64-token rollout, holds its slot for 54 empty steps. Rows are grouped by whether they stop at a string
    and by their max_tokens' power of two; a workload of one kind (best-of-N) stays one batch, a mixed one
    (MCTS: steps and rollouts) runs as a few, and the short group's callers get their answers first.
    """
    groups: dict[tuple[bool, int], list[_Row]] = {}
    for r in rows:
        groups.setdefault((bool(r.sampling.stop), r.sampling.max_tokens.bit_length()), []).append(r)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[1], not k[0]))]


def _check_model_folder(path: Path, what: str) -> None:
    if not path.exists():
        raise EngineError(f"no {what} folder at {path}: {_MISSING_MODEL_FIX}")
    if not path.is_dir():
        raise EngineError(f"{path} is a file, not a {what} folder: {_MISSING_MODEL_FIX}")
    marker = "adapter_config.json" if what == "adapter" else "config.json"
    if not (path / marker).is_file():
        raise EngineError(
            f"{path} is not a {what} folder (it has no {marker}): "
            + (
                "pass the folder a PEFT training run saved (it holds adapter_config.json)"
                if what == "adapter"
                else _MISSING_MODEL_FIX
            )
        )


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
    ) -> None:
        self._init_runtime(max_batch_size, batch_wait_ms, device, dtype)
        self._load(Path(model_path), Path(adapter_path) if adapter_path else None, model_version)

    @classmethod
    def from_model(
        cls, model: Any, tokenizer: Any, *, model_version: str, max_batch_size: int = 64, batch_wait_ms: float = 10,
    ) -> HFEngine:
        """Serve a model object that is already loaded, without copying it (e.g. the one a trainer is updating:
        every batch then samples from the weights as they are at that moment, so no weight sync is needed).

        The engine takes the model as it is (device, dtype, train/eval mode, PEFT wrapper) and does not change the
        tokenizer's padding side (it pads rows itself). `reload` replaces the model with one loaded from disk.
        """
        engine = cls.__new__(cls)
        engine._init_runtime(max_batch_size, batch_wait_ms, None, None)
        param = next(model.parameters())
        source = getattr(getattr(model, "config", None), "_name_or_path", "") or "<in-memory model>"
        engine._adopt(model, tokenizer, param.device, param.dtype, Path(source), None, model_version)
        return engine

    def _init_runtime(self, max_batch_size: int, batch_wait_ms: float, device: str | None, dtype: str | None) -> None:
        if max_batch_size < 1:
            raise EngineError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if batch_wait_ms < 0:
            raise EngineError(f"batch_wait_ms must be 0 or more, got {batch_wait_ms}")
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000
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
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_path = model_path.expanduser()
        _check_model_folder(model_path, "model")
        if adapter_path is not None:
            adapter_path = adapter_path.expanduser()
            _check_model_folder(adapter_path, "adapter")

        device = torch.device(self._device_arg or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self._dtype_arg is None:
            dtype = (
                torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
            )
        else:
            dtype = getattr(torch, str(self._dtype_arg).removeprefix("torch."), None)
            if not isinstance(dtype, torch.dtype):
                raise EngineError(f"unknown dtype {self._dtype_arg!r}: use float32, bfloat16 or float16")
            if device.type == "cpu" and dtype != torch.float32:
                raise EngineError(
                    f"dtype {self._dtype_arg} is slow or unsupported on CPU: leave dtype unset (float32 on CPU)"
                )
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_path)
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        except (OSError, ValueError) as e:
            raise EngineError(
                f"could not load a causal LM from {model_path}: {e}. {_MISSING_MODEL_FIX}"
            ) from e
        if adapter_path is not None:
            from peft import PeftModel

            # Merged for inference: one matmul per layer instead of base + low-rank; reload() reloads the base.
            model = PeftModel.from_pretrained(model, adapter_path).merge_and_unload()
        model.to(device).eval()
        # Left padding: decoder-only models continue from the last position of each row.
        tokenizer.padding_side = "left"
        self._adopt(model, tokenizer, device, dtype, model_path, adapter_path, model_version)

    def _adopt(
        self, model: Any, tokenizer: Any, device: torch.device, dtype: torch.dtype, model_path: Path,
        adapter_path: Path | None, model_version: str | None,
    ) -> None:
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        eos: set[int] = set()
        for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
            if isinstance(source, int):
                eos.add(source)
            elif isinstance(source, list):
                eos.update(source)
        if not eos:
            raise EngineError(
                f"{model_path}: the tokenizer has no eos_token; set one in tokenizer_config.json"
            )

        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.model_path = model_path
        self.adapter_path = adapter_path
        self._eos_ids = sorted(eos)
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
        """Swap in new weights (after a promotion). Waits for the batch in flight; queued rows use the new ones."""
        async with self._gate_lock():
            await asyncio.get_running_loop().run_in_executor(
                self._executor,
                self._load,
                Path(model_path),
                Path(adapter_path) if adapter_path else None,
                model_version,
            )

    # ---------------------------------------------------------------------------------------------- prompts
    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """Token ids of the prompt: the chat template for messages, the raw text (with BOS if any) for prompts."""
        return encode_prompt(self.tokenizer, request, self.model_path)

    def _check_length(self, prompt_len: int, max_tokens: int) -> None:
        check_prompt_length(prompt_len, max_tokens, self.context_length, self.model_version)

    # ------------------------------------------------------------------------------------------- generation
    async def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        """Queue every row of every request, then wait for all; rows from concurrent callers share batches."""
        if self._closed:
            raise EngineError("this engine is closed: create a new one with agents.engines.load_engine(...)")
        requests = as_requests(requests)
        loop = asyncio.get_running_loop()
        encoded: list[list[int]] = []
        for request in requests:  # validate everything before queueing anything
            ids = self.prompt_ids(request)
            self._check_length(len(ids), request.sampling.max_tokens)
            encoded.append(ids)
        state = self._loop_state(loop)
        futures: list[list[asyncio.Future[Completion]]] = []
        for request, ids in zip(requests, encoded, strict=True):
            s = request.sampling
            base_seed = s.seed if s.seed is not None else random.getrandbits(62)
            row_futures = []
            for k in range(s.n):
                fut: asyncio.Future[Completion] = loop.create_future()
                state.queue.put_nowait(_Row(ids, s, base_seed + k, fut))
                row_futures.append(fut)
            futures.append(row_futures)
        self.stats.requests += len(requests)
        return [list(await asyncio.gather(*fs)) for fs in futures]

    def _gate_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._gate.get(loop)
        if lock is None:
            lock = self._gate[loop] = asyncio.Lock()
        return lock

    def _loop_state(self, loop: asyncio.AbstractEventLoop) -> _LoopState:
        state = self._loops.get(loop)
        if state is None or state.task.done():
            queue: asyncio.Queue[_Row] = asyncio.Queue()
            state = _LoopState(queue, loop.create_task(self._batch_loop(queue), name="strop-hf-batcher"))
            self._loops[loop] = state
        return state

    async def _batch_loop(self, queue: asyncio.Queue[_Row]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.batch_wait_s
            while len(batch) < self.max_batch_size:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            batch = [r for r in batch if not r.future.done()]  # callers that were cancelled
            for group in length_groups(batch):
                try:
                    async with self._gate_lock():
                        results = await loop.run_in_executor(self._executor, self._run_batch, group)
                except Exception as e:  # handed to every waiting caller, never swallowed
                    for row in group:
                        if not row.future.done():
                            row.future.set_exception(
                                e if isinstance(e, EngineError) else EngineError(f"generation failed: {e!r}")
                            )
                    continue
                for row, completion in zip(group, results, strict=True):
                    if not row.future.done():
                        row.future.set_result(completion)

    def _run_batch(self, rows: list[_Row]) -> list[Completion]:
        """Runs on the worker thread: one `generate` call over all rows."""
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        width = max(len(r.prompt_ids) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows])
        attention = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows])
        sampler = _RowSampler(rows, self.device)
        stopper = _RowStop(rows, width, self.tokenizer, self.device)
        config = GenerationConfig(
            max_new_tokens=max(r.sampling.max_tokens for r in rows),
            do_sample=False,  # _RowSampler has already drawn the token; greedy just follows its mask
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=self._eos_ids,
        )
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                generation_config=config,
                logits_processor=LogitsProcessorList([sampler]),
                stopping_criteria=StoppingCriteriaList([stopper]),
            )
        generated = out[:, width:].tolist()
        logprobs = torch.stack(sampler.logprobs, dim=1).tolist() if sampler.logprobs else [[] for _ in rows]
        completions = [
            self._finish(row, gen, lps) for row, gen, lps in zip(rows, generated, logprobs, strict=True)
        ]
        self.stats.batches += 1
        self.stats.rows += len(rows)
        self.stats.completions += len(rows)
        self.stats.tokens_generated += sum(len(c.token_ids) for c in completions)
        return completions

    def _finish(self, row: _Row, generated: list[int], logprobs: list[float]) -> Completion:
        """Trim one row at its max_tokens, its first EOS or its first stop string."""
        s = row.sampling
        tokens = generated[: s.max_tokens]
        reason = FinishReason.LENGTH
        body = tokens
        for j, t in enumerate(tokens):
            if t in self._eos_ids:
                tokens, body, reason = tokens[: j + 1], tokens[:j], FinishReason.STOP
                break
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        matched = None
        if s.stop:
            hits = [(text.find(stop), stop) for stop in s.stop if stop and stop in text]
            if hits:
                pos, matched = min(hits)
                text, reason = text[:pos], FinishReason.STOP
                tokens = body[: self._tokens_through(body, pos + len(matched))]
        return Completion(
            text=text,
            prompt_token_ids=row.prompt_ids,
            token_ids=tokens,
            logprobs=logprobs[: len(tokens)] if s.logprobs else None,
            finish_reason=reason,
            model_version=self._model_version,
            matched_stop=matched,
        )

    def _tokens_through(self, body: list[int], chars: int) -> int:
        """Fewest leading tokens of `body` whose text is at least `chars` long (binary search: length grows)."""
        lo, hi = 1, len(body)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(self.tokenizer.decode(body[:mid], skip_special_tokens=True)) >= chars:
                hi = mid
            else:
                lo = mid + 1
        return lo

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


class _RowSampler(LogitsProcessor):
    """A logits processor that samples each row with its own temperature, top-p and generator.

    It returns a mask that is 0 at the chosen token and -inf elsewhere, so `generate` in greedy mode picks
    exactly the token drawn here, and it records that token's log-prob on the way.
    """

    def __init__(self, rows: list[_Row], device: Any) -> None:
        temps = [r.sampling.temperature for r in rows]
        self.temps = torch.tensor([t if t > 0 else 1.0 for t in temps], device=device).unsqueeze(1)
        self.top_p = torch.tensor([r.sampling.top_p for r in rows], device=device).unsqueeze(1)
        self.sampled = [i for i, t in enumerate(temps) if t > 0]
        self.any_top_p = any(r.sampling.top_p < 1.0 for r in rows)
        self.generators = {}
        for i in self.sampled:
            g = torch.Generator(device=device)
            g.manual_seed(rows[i].seed)
            self.generators[i] = g
        self.logprobs: list[Any] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        scores = scores.float()
        if not self.sampled:
            # All greedy: generate's own argmax picks the same tokens, so skip the mask; log-prob of the
            # chosen token only (logit - logsumexp), not a full log_softmax over the vocabulary.
            chosen = scores.argmax(dim=-1, keepdim=True)
            self.logprobs.append((scores.gather(1, chosen).squeeze(1) - scores.logsumexp(dim=-1)).cpu())
            return scores
        else:
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
        mask = torch.full_like(scores, float("-inf"))
        return mask.scatter_(1, chosen.unsqueeze(1), 0.0)


class _RowStop(StoppingCriteria):
    """Stopping criterion per row: its own max_tokens and stop strings (transformers' are per batch)."""

    def __init__(self, rows: list[_Row], prompt_width: int, tokenizer: Any, device: Any) -> None:
        self.width = prompt_width
        self.tokenizer = tokenizer
        self.max_tokens = torch.tensor([r.sampling.max_tokens for r in rows], device=device)
        # A stop string of m characters spans at most m tokens (+ slack for tokens that decode to nothing).
        self.stops = {
            i: (r.sampling.stop, max(map(len, r.sampling.stop)) + 4)
            for i, r in enumerate(rows)
            if r.sampling.stop
        }

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
        return done
