"""`strop report` on a real evolution of the tiny model, opened in headless Chromium: the page is self-contained
(nothing to fetch), Chromium lays out *our* page (not an error page), and its screenshot shows plots (axes,
many colours, the lines' colours), not a blank page. Without Chromium this fails, never skips
(tests/browser.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from strop.cli import app
from strop.training.evolve import Evolution
from strop.training.recipe import load_recipe
from tests.browser import analyse, dump_dom, screenshot
from tests.training.evolve_helpers import tiny_recipe

WHITE = (255, 255, 255)
AXIS = (0, 0, 0)  # matplotlib's spines
BLUE = (0x1F, 0x77, 0xB4)  # matplotlib's first colour: the first line, bar or curve of every plot


@pytest.mark.slow
async def test_report_of_a_tiny_evolution_renders_its_plots_in_chromium(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    from strop.memory import Store

    db = f"sqlite:///{tmp_path / 's.db'}"
    recipe_path = tiny_recipe(tmp_path, name="tiny-report", db=db)
    store = Store(db)
    await Evolution(load_recipe(recipe_path), store, progress=False).run(1)
    candidate = store.list_models()[-1]
    store.close()

    out = CliRunner().invoke(app, ["report", str(recipe_path), "--out", str(tmp_path / "report")])
    assert out.exit_code == 0, out.output
    page = tmp_path / "report" / "report.html"
    assert f"wrote {page}" in out.output

    # Self-contained: no script, stylesheet, frame, font or URL; every image inline.
    source = page.read_text(encoding="utf-8")
    assert not re.search(r"<script|<link|<iframe|@import|url\(|https?://|\bhref\s*=", source, re.I)
    images = re.findall(r'<img[^>]*\bsrc="([^"]*)"', source)
    assert len(images) == 4 and all(src.startswith("data:image/png;base64,") for src in images)

    # Chromium parsed our page: its title, sections and the versions of the run.
    dom = dump_dom(page)
    assert "<title>strop report: tiny-report</title>" in dom and "ERR_FILE" not in dom
    assert re.findall(r"<h2>([^<]+)</h2>", dom) == [
        "Model versions",
        "Held-out metrics along the lineage",
        "Data per stage",
        "Training loss",
        "Rewards",
    ]
    assert candidate.name == "tiny-report-c1" and candidate.name in dom and ">tiny<" in dom

    # And it draws the plots: white page, many colours, matplotlib's axes, the curves' blue.
    px = analyse(screenshot(page, tmp_path / "report.png", width=1000, height=2400))
    assert px.background == WHITE, px.background
    assert 0.03 < px.ink < 0.5, f"ink {px.ink:.3f}: blank or flooded page"
    assert px.colours >= 300, f"only {px.colours} colours: no plots drawn"
    assert px.horizontal_lines(AXIS, 400) >= 4, "fewer than 4 x axes: the plots did not render"
    assert px.vertical_lines(AXIS, 150) >= 4, "fewer than 4 y axes: the plots did not render"
    assert px.near(BLUE, 20) >= 500, f"{px.near(BLUE, 20)} pixels of the plots' first colour"


def test_report_names_what_to_run_on_an_empty_store(tmp_path: Path) -> None:
    out = CliRunner().invoke(
        app, ["report", "--db", str(tmp_path / "empty.db"), "--out", str(tmp_path / "r")]
    )
    assert out.exit_code == 1 and "strop evolve" in out.output and not (tmp_path / "r").exists()
    out = CliRunner().invoke(app, ["report", "no-such-recipe", "--db", str(tmp_path / "empty.db")])
    assert out.exit_code == 1 and "no recipe file, run id or recipe name" in out.output
