"""`strop report`: one self-contained HTML page about an evolution (or a run), rebuilt from the store.

The page answers what a person asks after a self-evolution job: did the model get better, which versions were
promoted or rejected and why, how much data each stage produced and of what kind, did training converge, did
rewards go up, and for each loop that ran its own figures (critic F1 and correction accuracy, self-correction
Δ, search accuracy against budget, game win rates and Elo). Everything is inline: CSS in a <style>, figures as
base64 PNG (training.report_plots), no script and no link, so it can be mailed, archived as a CI artefact or
opened offline. Reading is training.report_data; the panels' parsing is training.report_panels.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from strop.training import report_plots as plots
from strop.training.report_data import ReportData, ReportError, collect, resolve_scope
from strop.training.report_panels import Panels, panels

__all__ = ["ReportError", "build_report", "render_html", "write_report"]

_CSS = """body{font-family:system-ui,-apple-system,sans-serif;margin:24px auto;max-width:900px;color:#1f2328;
background:#fff;padding:0 16px}h1{font-size:1.6em;margin-bottom:4px}h2{font-size:1.2em;margin-top:28px;
border-bottom:1px solid #d0d7de;padding-bottom:4px}.sub{color:#59636e;margin-top:0}img{max-width:100%;display:block}
table{border-collapse:collapse;font-size:.85em;margin:8px 0}th,td{border:1px solid #d0d7de;padding:3px 8px;
text-align:left}th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.status{border-radius:10px;padding:1px 8px;font-size:.9em;white-space:nowrap}.promoted{background:#dafbe1;
color:#1a7f37}.rejected{background:#ffebe9;color:#cf222e}.base{background:#ddf4ff;color:#0969da}
.candidate{background:#fff8c5;color:#9a6700}.note{color:#59636e;font-size:.85em}"""


def build_report(store: Any, target: str | None) -> tuple[ReportData, Panels]:
    """Read the target's data from the store (see `report_data.resolve_scope` for what TARGET may be)."""
    data = collect(store, resolve_scope(store, target))
    return data, panels([v.label for v in data.versions], [v.metrics for v in data.versions])


def write_report(store: Any, target: str | None, out_dir: str | Path | None = None) -> Path:
    """Write `report.html` into `out_dir` (created; default runs/<recipe or run>, where `strop evolve` writes
    its table) and return its path."""
    data, found = build_report(store, target)
    out = Path(out_dir) if out_dir is not None else Path("runs") / re.sub(r"[^\w.-]+", "_", data.title)
    out.mkdir(parents=True, exist_ok=True)
    page = out / "report.html"
    page.write_text(render_html(data, found), encoding="utf-8")
    return page


def _pct(x: Any) -> str:
    return "-" if not isinstance(x, int | float) else f"{100 * x:.1f}%"


def _versions_table(data: ReportData, found: Panels) -> str:
    head = [
        "version",
        "cycle",
        "stage",
        "role",
        "status",
        "parent",
        *found.lineage,
        "examples",
        "train loss",
        "decision",
    ]
    names = {v.record.id: v.label for v in data.versions}
    rows = []
    for i, v in enumerate(data.versions):
        m = v.metrics
        parent = names.get(v.record.parent_id or "", (v.record.parent_id or "-")[:12])
        cells = [
            html.escape(v.label),
            str(v.cycle),
            html.escape(v.stage),
            html.escape(v.role),
            f'<span class="status {html.escape(v.status)}">{html.escape(v.status)}</span>',
            html.escape(parent),
        ]
        cells += [f'<td class="num">{_pct(values[i])}</td>' for values in found.lineage.values()]
        loss = m.get("train_loss")
        cells += [
            f'<td class="num">{m.get("examples", "-")}</td>',
            f'<td class="num">{loss:.3f}</td>' if isinstance(loss, int | float) else "<td>-</td>",
            html.escape(str(m.get("decision", ""))),
        ]
        rows.append("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in cells) + "</tr>")
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<table><tr>{th}</tr>{''.join(rows)}</table>"


def _counts_table(data: ReportData) -> str:
    kinds = list(dict.fromkeys(k for _, k, _ in data.counts))
    groups = list(dict.fromkeys(g for g, _, _ in data.counts))
    th = "".join(f"<th>{html.escape(h)}</th>" for h in ["collection", *kinds])
    rows = "".join(
        f"<tr><td>{html.escape(g)}</td>"
        + "".join(
            f'<td class="num">{sum(n for g2, k2, n in data.counts if g2 == g and k2 == k)}</td>'
            for k in kinds
        )
        + "</tr>"
        for g in groups
    )
    return f"<table><tr>{th}</tr>{rows}</table>"


def _figure(title: str, uri: str, note: str = "") -> str:
    caption = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f'<h2>{html.escape(title)}</h2><img alt="{html.escape(title)}" src="{uri}">{caption}'


def render_html(data: ReportData, found: Panels) -> str:
    """The page; sections whose data is empty are left out."""
    labels = [v.label for v in data.versions]
    statuses = [v.status for v in data.versions]
    parts = [f"<h1>{html.escape(data.title)}</h1><p class='sub'>{html.escape(data.subtitle)}</p>"]
    if data.versions:
        parts.append("<h2>Model versions</h2>" + _versions_table(data, found))
    if found.lineage:
        parts.append(
            _figure(
                "Held-out metrics along the lineage",
                plots.lineage(labels, statuses, found.lineage),
                "Greedy pass@1 on each task set's held-out split, per version in the order they were "
                "made; the marker says whether the gate promoted or rejected it.",
            )
        )
    if data.counts:
        parts.append(_figure("Data per stage", plots.counts(data.counts)) + _counts_table(data))
    if data.losses:
        parts.append(
            _figure(
                "Training loss",
                plots.curves(
                    data.losses, title="training loss per job", xlabel="optimizer step", ylabel="loss"
                ),
            )
        )
    if data.episode_rewards or data.train_rewards:
        body = ""
        if data.episode_rewards:
            body += f'<img alt="episode rewards" src="{plots.curves(data.episode_rewards, title="episode reward per collection (running mean)", xlabel="episode", ylabel="reward")}">'
        if data.train_rewards:
            body += f'<img alt="training rewards" src="{plots.curves(data.train_rewards, title="mean group reward per training step (on-line jobs)", xlabel="optimizer step", ylabel="reward")}">'
        parts.append("<h2>Rewards</h2>" + body)
    if found.critic:
        parts.append(
            _figure(
                "Critic",
                plots.critic(labels, statuses, found.critic),
                "The critic benchmark on held-out tasks: F1 at finding the first wrong step, and how "
                "often its corrected solution is right.",
            )
        )
    if found.self_correct:
        parts.append(
            _figure(
                "Self-correction",
                plots.self_correction(labels, statuses, found.self_correct, found.self_correct_delta),
            )
        )
    if found.search:
        parts.append(
            _figure(
                "Search",
                plots.search(found.search),
                "Held-out accuracy of each search method at equal token budgets.",
            )
        )
    if found.games or found.elo:
        parts.append(
            _figure(
                "Games",
                plots.games(labels, statuses, found.games, found.elo),
                "Greedy games on held-out seeds against fixed opponents, from both seats.",
            )
        )
    title = html.escape(f"strop report: {data.title}")
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_CSS}</style></head><body>{''.join(parts)}"
        "<p class='note'>Written by <code>strop report</code> from the trajectory store.</p></body></html>"
    )
