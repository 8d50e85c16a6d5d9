"""Role-conditioned advantage estimation (RAE, SPIRAL arXiv 2506.24119): one baseline per (game, role).

One policy plays both seats of a zero-sum game, so a single baseline over all its actions would be about 0
and useless, while the seats' expected returns differ (moving first in TicTacToe is worth a lot). RAE keeps
b[game, role] as an exponential moving average of that role's returns, b <- alpha * b + (1 - alpha) * R, and
an action of that role is trained with advantage R - b[game, role]. SPIRAL reports that without it training
collapses: the model stops reasoning. The advantage subtracts the baseline as it was *before* this game's
return was folded in (as SPIRAL's own code does), so the baseline does not depend on the action it scores and
the policy gradient stays unbiased.

The baselines are normally the store's (`Store.update_baselines`: persisted, shared by workers, idempotent
by update id). `MemoryBaselines` is the same contract in a dict, for a graph used without a store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from strop.memory.records import BaselineUpdate, BaselineUpdateResult


@runtime_checkable
class BaselineTable(Protocol):
    """Where baselines live: the Store, or `MemoryBaselines`."""

    async def aupdate_baselines(self, updates: Sequence[BaselineUpdate]) -> list[BaselineUpdateResult]: ...


def ema(before: float, reward: float, decay: float) -> float:
    """b <- decay * b + (1 - decay) * R."""
    return decay * before + (1.0 - decay) * reward


class MemoryBaselines:
    """Baselines in a dict, with the store's semantics: start at 0, applied in order, idempotent by id."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str, str], tuple[float, int]] = {}
        self._done: dict[str, BaselineUpdateResult] = {}

    async def aupdate_baselines(self, updates: Sequence[BaselineUpdate]) -> list[BaselineUpdateResult]:
        out = []
        for u in updates:
            if u.id in self._done:
                out.append(self._done[u.id].model_copy(update={"replayed": True}))
                continue
            key = (u.namespace, u.game, u.role)
            before, count = self.values.get(key, (0.0, 0))
            after = ema(before, u.reward, u.decay)
            self.values[key] = (after, count + 1)
            res = BaselineUpdateResult(
                id=u.id,
                namespace=u.namespace,
                game=u.game,
                role=u.role,
                reward=u.reward,
                before=before,
                after=after,
                count=count + 1,
            )
            self._done[u.id] = res
            out.append(res)
        return out


def advantage(reward: float, baseline: float | None) -> float:
    """R - b with RAE; R alone without it (plain REINFORCE, SPIRAL's ablation)."""
    return reward if baseline is None else reward - baseline
