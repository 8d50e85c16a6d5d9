"""The report's figures: matplotlib (Agg, no display) drawn to PNG and inlined as base64, so the page is one
file that opens anywhere without a network or a script.

Each function takes what training.report_data / report_panels extracted and returns a data: URI. Figures
use `matplotlib.figure.Figure` directly, not pyplot, so drawing keeps no global state between reports.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

from strop.training.report_data import Curve
from strop.training.report_panels import Series

# Marker per model status: where a version went after its evaluation.
STATUS_MARKERS = {
    "base": ("s", "starting model"),
    "promoted": ("o", "promoted"),
    "rejected": ("X", "rejected"),
    "candidate": ("^", "not decided yet"),
}
WIDTH = 8.6


def _figure(height: float = 3.4, cols: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH, height), dpi=100)
    axes = fig.subplots(1, cols)
    for ax in axes if cols > 1 else [axes]:
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def _png(fig: Any) -> str:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _versions_axis(ax: Any, labels: Sequence[str]) -> None:
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(
        labels, rotation=20 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center", fontsize=8
    )
    ax.set_xlim(-0.5, len(labels) - 0.5)


def _over_versions(
    ax: Any,
    labels: Sequence[str],
    statuses: Sequence[str],
    series: Series,
    *,
    percent: bool = True,
    styles: dict[str, str] | None = None,
) -> None:
    """One line per series across the versions; each point marked by its version's status."""
    scale = 100.0 if percent else 1.0
    for i, (name, values) in enumerate(series.items()):
        colour = f"C{i % 10}"
        pts = [(x, v * scale) for x, v in enumerate(values) if v is not None]
        style = (styles or {}).get(name, "-")
        ax.plot(*zip(*pts, strict=True), style, color=colour, alpha=0.7, lw=1.6, label=name)
        for x, y in pts:
            marker = STATUS_MARKERS.get(statuses[x], ("o", ""))[0]
            ax.plot([x], [y], marker, color=colour, ms=8, mec="black" if marker != "X" else colour)
    _versions_axis(ax, labels)
    if percent:
        ax.set_ylim(0, 100)
        ax.set_ylabel("%")


def _status_legend(ax: Any, statuses: Sequence[str]) -> None:
    from matplotlib.lines import Line2D

    shown = [s for s in STATUS_MARKERS if s in set(statuses)]
    handles = [
        Line2D([], [], ls="", marker=STATUS_MARKERS[s][0], color="grey", ms=7, label=STATUS_MARKERS[s][1])
        for s in shown
    ]
    first = ax.legend(fontsize=8, loc="upper left")
    ax.add_artist(first)
    ax.legend(handles=handles, fontsize=8, loc="lower right")


def lineage(labels: Sequence[str], statuses: Sequence[str], series: Series) -> str:
    fig, ax = _figure(3.8)
    _over_versions(ax, labels, statuses, series)
    ax.set_title("held-out score per model version")
    _status_legend(ax, statuses)
    return _png(fig)


def counts(rows: Sequence[tuple[str, str, int]]) -> str:
    """Stacked bars: examples per collection, split by kind."""
    fig, ax = _figure(3.2)
    groups = list(dict.fromkeys(g for g, _, _ in rows))
    kinds = list(dict.fromkeys(k for _, k, _ in rows))
    bottom = [0.0] * len(groups)
    for i, kind in enumerate(kinds):
        heights = [float(sum(n for g2, k, n in rows if g2 == g and k == kind)) for g in groups]
        ax.bar(range(len(groups)), heights, bottom=bottom, width=0.6, color=f"C{i % 10}", label=kind)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    _versions_axis(ax, groups)
    ax.set_ylabel("examples")
    ax.set_title("training examples collected per stage, by kind")
    ax.legend(fontsize=8)
    return _png(fig)


def curves(curves: Sequence[Curve], *, title: str, xlabel: str, ylabel: str, height: float = 3.2) -> str:
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure(height)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and episodes count whole
    for i, c in enumerate(curves):
        xs, ys = zip(*c.points, strict=True)
        ax.plot(xs, ys, "-" if len(xs) > 1 else "o", color=f"C{i % 10}", lw=1.6, label=c.label)
    low, high = ax.get_xlim()
    if high - low < 2:  # a single step: whole numbers around it, not 0.945 ... 1.05
        middle = round((low + high) / 2)
        ax.set_xlim(middle - 1, middle + 1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return _png(fig)


def self_correction(labels: Sequence[str], statuses: Sequence[str], acc: Series, delta: Series) -> str:
    """Left: accuracy at turn 1 (dashed) and the last turn (solid); right: Δ per version and feedback kind."""
    fig, (left, right) = _figure(3.6, cols=2)
    styles = {name: "--" if name.endswith("turn 1") else "-" for name in acc}
    _over_versions(left, labels, statuses, acc, styles=styles)
    left.set_title("accuracy at turn 1 and at the last turn", fontsize=10)
    left.legend(fontsize=7)
    width = 0.8 / max(len(delta), 1)
    for i, (name, values) in enumerate(delta.items()):
        xs = [x + (i - (len(delta) - 1) / 2) * width for x, v in enumerate(values) if v is not None]
        right.bar(xs, [100 * v for v in values if v is not None], width=width, color=f"C{i % 10}", label=name)
    right.axhline(0, color="black", lw=0.8)
    _versions_axis(right, labels)
    right.set_ylabel("points (%)")
    right.set_title("self-correction Δ (last turn - turn 1)", fontsize=10)
    right.legend(fontsize=7)
    return _png(fig)


def search(per_version: dict[str, dict[str, list[tuple[int, float]]]]) -> str:
    """Accuracy against the token budget: one colour per method, one line style per version."""
    fig, ax = _figure(3.6)
    methods = list(dict.fromkeys(m for per in per_version.values() for m in per))
    dashes = ["-", "--", ":", "-."]
    for j, (version, per) in enumerate(per_version.items()):
        for name, pts in per.items():
            xs, ys = zip(*pts, strict=True)
            suffix = f" ({version})" if len(per_version) > 1 else ""
            ax.plot(
                xs,
                [100 * y for y in ys],
                dashes[j % 4],
                marker="o",
                color=f"C{methods.index(name) % 10}",
                label=f"{name}{suffix}",
            )
    from matplotlib.ticker import NullFormatter, NullLocator

    ax.set_xscale("log", base=2)
    budgets = sorted({b for per in per_version.values() for pts in per.values() for b, _ in pts})
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("token budget per problem")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(
        "search accuracy against budget" + (f": {next(iter(per_version))}" if len(per_version) == 1 else "")
    )
    ax.legend(fontsize=8)
    return _png(fig)


def games(labels: Sequence[str], statuses: Sequence[str], win: Series, elo: Series) -> str:
    """Win rate per opponent (seats dashed/dotted), and Elo beside it when it was recorded."""
    fig, axes = _figure(3.6, cols=2 if elo else 1)
    left = axes[0] if elo else axes
    styles = {n: "--" if n.endswith("seat 0") else ":" if n.endswith("seat 1") else "-" for n in win}
    _over_versions(left, labels, statuses, win, styles=styles)
    left.set_title("win rate per opponent (seats dashed, dotted)", fontsize=10)
    left.legend(fontsize=7)
    if elo:
        _over_versions(axes[1], labels, statuses, elo, percent=False)
        axes[1].set_ylabel("Elo (random = 1000)")
        axes[1].set_title("Elo", fontsize=10)
        axes[1].legend(fontsize=7)
    return _png(fig)


def critic(labels: Sequence[str], statuses: Sequence[str], series: Series) -> str:
    fig, ax = _figure(3.4)
    styles = {n: "--" if n.endswith("correction accuracy") else "-" for n in series}
    _over_versions(ax, labels, statuses, series, styles=styles)
    ax.set_title("critic benchmark per version: F1 (solid) and correction accuracy (dashed)")
    _status_legend(ax, statuses)
    return _png(fig)
