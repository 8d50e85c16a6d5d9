"""The report's per-loop panels, parsed from the figures the evaluations record on model versions.

Each evaluation writes flat keys with a fixed shape (agents.evaluation, critic_eval, self_correct_eval,
search_eval, game_eval; `strop eval-game` adds `{game}/elo`); a panel collects one shape across the report's
versions, in lineage order, with None where a version was not measured. A panel with no value at all is
left out of the page: a loop that did not run draws nothing. Pure functions of the versions, so each panel
is tested with hand-built records.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

PASS = re.compile(r"^(?P<set>.+)/heldout/pass@1$")
CRITIC = re.compile(r"^(?P<set>.+)/(?P<kind>critic|prm)/(?P<m>f1|correction_acc)$")
SELF_CORRECT = re.compile(r"^(?P<set>.+)/heldout/self_correct/(?P<fb>[^/]+)/(?P<m>acc_t1|acc_last|net)$")
SEARCH = re.compile(r"^(?P<set>.+)/heldout/search/(?P<method>[^/@]+)@(?P<budget>\d+)$")
GAME = re.compile(r"^(?P<game>.+)/vs_(?P<opp>[^/]+)/(?:seat(?P<seat>[01])/)?win_rate$")
ELO = re.compile(r"^(?P<game>.+)/elo$")

Series = dict[str, list[float | None]]  # name -> one value per version (lineage order)


@dataclass
class Panels:
    """What the loop panels draw; an empty one is left out."""

    lineage: Series = field(default_factory=dict)
    critic: Series = field(default_factory=dict)
    self_correct: Series = field(default_factory=dict)
    self_correct_delta: Series = field(default_factory=dict)
    search: dict[str, dict[str, list[tuple[int, float]]]] = field(
        default_factory=dict
    )  # version -> method -> pts
    games: Series = field(default_factory=dict)
    elo: Series = field(default_factory=dict)


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def _series(metrics: Sequence[dict[str, Any]], pattern: re.Pattern[str], name: Any) -> Series:
    """One series per distinct `name(match)` over the keys matching `pattern`, ordered by first appearance."""
    keys: dict[str, list[str]] = {}
    for m in metrics:
        for key in m:
            if (hit := pattern.match(key)) is not None and (label := name(hit)) is not None:
                keys.setdefault(label, [])
                if key not in keys[label]:
                    keys[label].append(key)
    out: Series = {}
    for label, ks in keys.items():
        values = [next((v for k in ks if (v := _number(m.get(k))) is not None), None) for m in metrics]
        if any(v is not None for v in values):
            out[label] = values
    return out


def lineage(metrics: Sequence[dict[str, Any]]) -> Series:
    """Held-out pass@1 per task set; a recipe that never measures it (a critic-only or game-only stage) shows
    its headline instead: critic F1, win rate against each opponent."""
    out = _series(metrics, PASS, lambda m: f"{m['set']} pass@1")
    if not out:
        out = _series(metrics, CRITIC, lambda m: f"{m['set']} {m['kind']} F1" if m["m"] == "f1" else None)
        out |= _series(metrics, GAME, lambda m: None if m["seat"] else f"{m['game']} win rate vs {m['opp']}")
    return out


def critic(metrics: Sequence[dict[str, Any]]) -> Series:
    names = {"f1": "F1", "correction_acc": "correction accuracy"}
    return _series(metrics, CRITIC, lambda m: f"{m['set']} {m['kind']} {names[m['m']]}")


def self_correct(metrics: Sequence[dict[str, Any]]) -> tuple[Series, Series]:
    """Accuracy at turn 1 and at the last turn per feedback kind, and the change between them (Δ = last - first,
    the net number of answers fixed)."""
    names = {"acc_t1": "turn 1", "acc_last": "last turn"}
    acc = _series(
        metrics, SELF_CORRECT, lambda m: f"{m['set']} {m['fb']}: {names[m['m']]}" if m["m"] in names else None
    )
    delta = _series(metrics, SELF_CORRECT, lambda m: f"{m['set']} {m['fb']}" if m["m"] == "net" else None)
    for label, values in acc.items():  # older records without `net`: derive it
        if label.endswith(": turn 1") and (base := label.removesuffix(": turn 1")) not in delta:
            last = acc.get(f"{base}: last turn", [])
            if last:
                delta[base] = [
                    None if a is None or b is None else b - a for a, b in zip(values, last, strict=True)
                ]
    return acc, delta


def search(
    labels: Sequence[str], metrics: Sequence[dict[str, Any]]
) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Accuracy against budget per method, for each version that was measured."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for label, m in zip(labels, metrics, strict=True):
        hits = [
            (h, v)
            for key, value in m.items()
            if (h := SEARCH.match(key)) is not None and (v := _number(value)) is not None
        ]
        several = len({h["set"] for h, _ in hits}) > 1  # name the task set only when there are several
        per: dict[str, list[tuple[int, float]]] = {}
        for h, v in hits:
            per.setdefault(f"{h['set']} {h['method']}" if several else h["method"], []).append(
                (int(h["budget"]), v)
            )
        if per:
            out[label] = {name: sorted(pts) for name, pts in per.items()}
    return out


def games(metrics: Sequence[dict[str, Any]]) -> tuple[Series, Series]:
    """Win rate against each fixed opponent (both seats, and each seat), and Elo where `strop eval-game`
    recorded it."""
    win = _series(
        metrics, GAME, lambda m: f"{m['game']} vs {m['opp']}" + (f" seat {m['seat']}" if m["seat"] else "")
    )
    return win, _series(metrics, ELO, lambda m: f"{m['game']} Elo")


def panels(labels: Sequence[str], metrics: Sequence[dict[str, Any]]) -> Panels:
    sc, delta = self_correct(metrics)
    win, elo = games(metrics)
    return Panels(
        lineage=lineage(metrics),
        critic=critic(metrics),
        self_correct=sc,
        self_correct_delta=delta,
        search=search(labels, metrics),
        games=win,
        elo=elo,
    )
