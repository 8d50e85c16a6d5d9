"""`strop show`: a stored search tree drawn in the terminal and as a self-contained HTML page."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from typer.testing import CliRunner

from strop.cli import app


class _Items(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.items: list[dict[str, str | None]] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "li":
            self.items.append(a)
        if tag in ("script", "link", "img") or a.get("src"):
            self.external.append(tag)


def test_show_draws_a_stored_tree_and_writes_html(tiny_model_path: Path, tmp_path: Path) -> None:
    from strop.memory import Store

    db = str(tmp_path / "s.db")
    run = CliRunner().invoke(
        app,
        [
            "run",
            "mcts",
            "--model",
            "tiny",
            "--tasks",
            "arithmetic",
            "--episodes",
            "1",
            "--set",
            "system_prompt=null",
            "--set",
            "budget_tokens=150",
            "--db",
            db,
        ],
    )
    assert run.exit_code == 0, run.output
    [ep] = Store(db).list_episodes()
    page = tmp_path / "tree.html"
    out = CliRunner().invoke(app, ["show", ep.id, "--db", db, "--html", str(page)])
    assert out.exit_code == 0, out.output
    assert "(problem)" in out.output and "N=" in out.output and "Q=" in out.output
    parser = _Items()
    parser.feed(page.read_text())
    assert len(parser.items) == len(ep.steps) and not parser.external  # every node; nothing fetched
    chosen = [s.id for s in ep.steps if s.metadata.get("chosen")]
    assert {i["data-step"] for i in parser.items if i.get("class") == "chosen"} == set(chosen)
    missing = CliRunner().invoke(app, ["show", "nope", "--db", db])
    assert missing.exit_code != 0 and "no episode 'nope'" in missing.output
