"""`strop show EPISODE`: an episode as people read it. A search tree is drawn as a tree (step text, visits, Q,
the answer's path highlighted); a conversation or a set of samples as its steps in order. `--html FILE`
writes a self-contained page (no scripts, no external files) that any browser opens."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Annotated, Any

import typer

from strop.cli.common import DbOpt, fail


def show_cmd(
    episode: Annotated[str, typer.Argument(help="Episode id (see `strop db stats` or a run's episodes).")],
    html_out: Annotated[
        Path | None, typer.Option("--html", help="Also write a self-contained HTML page here.")
    ] = None,
    width: Annotated[int, typer.Option(help="Characters of each step's text shown in the terminal.")] = 60,
    db: DbOpt = None,
) -> None:
    """Draw an episode: a search tree with visits and Q per step, or a conversation turn by turn."""
    from rich.console import Console

    from strop.memory import Store

    ep = Store(db).get_episode(episode)
    if ep is None:
        fail(
            f"no episode {episode!r} in the store; list a run's episodes with `strop db stats` or check --db"
        )
    Console().print(render_rich(ep, width=width))
    if html_out is not None:
        html_out.write_text(render_html(ep), encoding="utf-8")
        typer.echo(f"wrote {html_out}")


def _children(ep: Any) -> dict[str | None, list[Any]]:
    kids: dict[str | None, list[Any]] = {}
    for s in sorted(ep.steps, key=lambda s: s.index):
        kids.setdefault(s.parent_id, []).append(s)
    return kids


def _label(s: Any, width: int | None) -> str:
    text = s.text.strip().replace("\n", " ⏎ ") or ("(problem)" if s.role == "root" else "(empty)")
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    stats = []
    if s.visits is not None:
        stats.append(f"N={s.visits}")
    if s.value is not None:
        stats.append(f"Q={s.value:.2f}")
    if s.reward is not None:
        stats.append(f"r={s.reward:g}")
    if s.metadata.get("turn"):
        stats.insert(0, f"turn {s.metadata['turn']}")
    return f"{text}  [{' '.join(stats)}]" if stats else text


def render_rich(ep: Any, *, width: int = 60) -> Any:
    """A rich Tree of the episode's steps by their parent links; the answer's path in bold green."""
    from rich.markup import escape
    from rich.tree import Tree as RichTree

    head = f"[bold]{escape(ep.loop)}[/] episode {escape(ep.id[:12])} on {escape(ep.task_id)}: reward {ep.reward:g}"
    tree = RichTree(head)
    kids = _children(ep)

    def add(branch: Any, step: Any) -> None:
        style = "bold green" if step.metadata.get("chosen") or step.metadata.get("correct") else ""
        node = branch.add(
            f"[{style}]{escape(_label(step, width))}[/]" if style else escape(_label(step, width))
        )
        for child in kids.get(step.id, []):
            add(node, child)

    for top in kids.get(None, []):
        add(tree, top)
    return tree


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
ul{list-style:none;padding-left:1.4em;border-left:1px solid #ccc}li{margin:.25em 0}
.step{font-family:ui-monospace,monospace;white-space:pre-wrap}.stats{color:#777;font-size:.85em;margin-left:.6em}
.chosen>.step{font-weight:bold;color:#1a7f37}"""


def render_html(ep: Any) -> str:
    """The episode as one HTML page: nested lists by parent link, the answer's path marked `chosen`."""
    kids = _children(ep)

    def item(step: Any) -> str:
        cls = ' class="chosen"' if step.metadata.get("chosen") or step.metadata.get("correct") else ""
        text = html.escape(step.text.strip() or ("(problem)" if step.role == "root" else "(empty)"))
        label = _label(step, None)
        stats = html.escape(label[label.rfind("  [") + 3 : -1]) if label.endswith("]") else ""
        inner = "".join(item(c) for c in kids.get(step.id, []))
        return (
            f'<li{cls} data-step="{html.escape(step.id)}"><span class="step">{text}</span>'
            f'<span class="stats">{stats}</span>{f"<ul>{inner}</ul>" if inner else ""}</li>'
        )

    body = "".join(item(s) for s in kids.get(None, []))
    title = html.escape(f"{ep.loop} episode {ep.id} on {ep.task_id}")
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>{_CSS}</style></head>'
        f"<body><h1>{title}</h1><p>reward {ep.reward:g}; outcome {html.escape(str(ep.outcome))}</p>"
        f"<ul>{body}</ul></body></html>"
    )


def register(app: typer.Typer) -> None:
    app.command("show", no_args_is_help=True)(show_cmd)
