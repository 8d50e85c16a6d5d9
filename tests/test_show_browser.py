"""`strop show EPISODE --html FILE` opened in a real browser: headless Chromium loads the page from disk and its
screenshot shows the tree, the answer's path in green; not a blank page, not Chromium's error page.

The episode is a hand-built MCTS tree stored as the mcts loop stores one (one step per node, `chosen` on the
answer's path), so no model runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from strop.cli import app
from tests.browser import analyse, dump_dom, screenshot

GREEN = (0x1A, 0x7F, 0x37)  # show.py's `.chosen>.step` colour
RULE = (0xCC, 0xCC, 0xCC)  # the nested lists' left borders
WHITE = (255, 255, 255)


def _store_tree(db: str) -> tuple[str, list[str]]:
    """A 9-node search tree for 17 + 25 stored as an mcts episode; its id and the answer path's step texts."""
    from strop.agents.search.tree import Tree
    from strop.memory import Store
    from strop.memory.records import EpisodeRecord, RunRecord, StepRecord

    tree = Tree()
    a = tree.add_child(0, "Add the tens: 10 + 20 = 30.\n", prior=0.6)
    b = tree.add_child(0, "Add the ones first: 7 + 5 = 12.\n", prior=0.3)
    c = tree.add_child(0, "Subtract: 25 - 17 = 8.\n", prior=0.1)
    a1 = tree.add_child(a.id, "Add the ones: 7 + 5 = 12, so 30 + 12 = 42. The answer is 42.", terminal=True)
    a2 = tree.add_child(a.id, "So 30 + 7 + 5 = 41. The answer is 41.", terminal=True)
    b1 = tree.add_child(b.id, "Then 12 + 30 = 42. The answer is 42.", terminal=True)
    b2 = tree.add_child(b.id, "Then 12 + 20 = 32. The answer is 32.", terminal=True)
    c1 = tree.add_child(c.id, "The answer is 8.", terminal=True)
    for leaf, reward, visits in [(a1, 1.0, 4), (a2, 0.0, 1), (b1, 1.0, 2), (b2, 0.0, 1), (c1, 0.0, 1)]:
        tree.nodes[leaf.id].reward = reward
        for _ in range(visits):
            tree.backpropagate(leaf.id, reward)
    chosen = {n.id for n in tree.path(a1.id)}

    store = Store(db)
    run = store.create_run(RunRecord(loop="mcts"))
    eid = "ep-show-browser"
    ids = {n.id: f"{eid}-node-{n.id}" for n in tree.nodes}
    steps = [
        StepRecord(
            id=ids[n.id],
            parent_id=ids[n.parent] if n.parent is not None else None,
            index=n.id,
            role="root" if n.parent is None else "assistant",
            text=n.step,
            reward=n.reward,
            value=n.q,
            visits=n.visits,
            metadata={
                "node": n.id,
                "terminal": n.terminal,
                "prior": n.prior,
                "own_value": n.value,
                "depth": n.depth,
                "chosen": n.id in chosen,
            },
        )
        for n in tree.nodes
    ]
    store.write_episode(
        EpisodeRecord(
            id=eid,
            run_id=run.id,
            task_id="arith-17+25",
            loop="mcts",
            reward=1.0,
            outcome={"n": 1, "correct": 1, "pass": True, "nodes": len(tree.nodes), "best": a1.id},
            steps=steps,
        )
    )
    store.close()
    return eid, [tree.nodes[i].step.strip() for i in sorted(chosen) if tree.nodes[i].step]


def test_show_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    eid, answer_path = _store_tree(db)
    page = tmp_path / "tree.html"
    out = CliRunner().invoke(app, ["show", eid, "--db", db, "--html", str(page)])
    assert out.exit_code == 0, out.output
    assert page.is_file() and f"wrote {page}" in out.output

    # Self-contained: nothing a browser would fetch (no scripts, stylesheets, images, fonts, links).
    source = page.read_text(encoding="utf-8")
    assert not re.search(
        r"<script|<link|<img|<iframe|\bsrc\s*=|\bhref\s*=|url\(|@import|https?://", source, re.I
    )

    # Chromium parsed *our* page: the title and the steps show.py writes, not an error page.
    dom = dump_dom(page)
    title = f"mcts episode {eid} on arith-17+25"
    assert f"<title>{title}</title>" in dom and f"<h1>{title}</h1>" in dom
    assert "ERR_FILE_NOT_FOUND" not in dom and "(problem)" in dom and "N=9" in dom
    for text in answer_path:
        assert text in dom
    assert dom.count('class="chosen"') == len(answer_path) + 1  # the root and the steps to the answer

    # And it draws: text on white, the tree's rules, the answer's path in green; many colours, not a flat page.
    px = analyse(screenshot(page, tmp_path / "tree.png", width=1000, height=700))
    assert px.size == (1000, 700)
    assert px.background == WHITE, px.background
    assert 0.01 < px.ink < 0.5, f"ink {px.ink:.3f}: blank or flooded page"
    assert px.colours >= 16, f"only {px.colours} colours"
    assert px.near(GREEN, 16) >= 100, f"{px.near(GREEN, 16)} pixels of the answer path's green"
    assert px.vertical_lines(RULE, 100) >= 2, "no rules down the tree's nested lists: its CSS did not apply"


def test_a_missing_browser_fails_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.browser

    monkeypatch.setenv("STROP_CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setattr(tests.browser.os, "access", lambda *_: False)
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install -y chromium"):
        tests.browser.chromium()
