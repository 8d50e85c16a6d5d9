"""Render a page in a real headless Chromium and look at the pixels, for tests of the HTML strop writes.

The browser is Debian's `chromium` package at /usr/bin/chromium (installed by `make setup` when it runs as
root, like bubblewrap); override with STROP_CHROMIUM. A browser that a library downloads by itself cannot be
fetched here, so nothing in this module downloads one. A missing browser FAILS the test that asked for it,
with the command that installs it: a rendering test that skips would let a blank page ship.

    png = screenshot(page, tmp_path / "page.png", width=1000, height=700)
    pixels = analyse(png)
    assert pixels.ink > 0.01 and pixels.colours > 8 and pixels.near((26, 127, 55)) > 20
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

INSTALL_HINT = "install Debian's chromium: `apt-get install -y chromium` as root (or `make setup` as root)"


def chromium() -> str:
    """The Chromium binary: $STROP_CHROMIUM, else `chromium` on PATH, else /usr/bin/chromium; fails if none."""
    candidates = [os.environ.get("STROP_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    pytest.fail(
        f"headless Chromium not found (tried $STROP_CHROMIUM, PATH, /usr/bin/chromium): {INSTALL_HINT}",
        pytrace=False,
    )


def _run(args: list[str], what: str, timeout: float) -> subprocess.CompletedProcess[str]:
    # A fresh profile per call: no state from ~/.config/chromium, and parallel tests do not share a lock.
    # --no-sandbox: Chromium refuses to start as root without it (CI containers run as root).
    with tempfile.TemporaryDirectory(prefix="strop-chromium-") as profile:
        cmd = [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--mute-audio",
            f"--user-data-dir={profile}",
            *args,
        ]
        # Its own session, so a hung browser goes with its renderer and GPU processes, and nothing else.
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(
                f"headless Chromium did not finish {what} in {timeout:g}s: {' '.join(cmd)}", pytrace=False
            )
    if proc.returncode != 0:
        pytest.fail(
            f"headless Chromium failed {what} (exit {proc.returncode}):\n{err[-3000:]}", pytrace=False
        )
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _url(html_path: Path) -> str:
    path = Path(html_path).resolve()
    if not path.is_file():  # Chromium exits 0 on a failed load, having written nothing: say why here
        pytest.fail(f"no page to render at {path}", pytrace=False)
    return path.as_uri()


def screenshot(
    html_path: Path, png_path: Path, width: int = 1200, height: int = 800, timeout: float = 90.0
) -> Path:
    """Load `html_path` (a local file) in headless Chromium and write a `width`x`height` PNG of the viewport."""
    url = _url(html_path)
    png_path = Path(png_path).resolve()
    png_path.unlink(missing_ok=True)
    _run([f"--screenshot={png_path}", f"--window-size={width},{height}", url], "a screenshot", timeout)
    if not png_path.is_file() or png_path.stat().st_size == 0:
        pytest.fail(f"headless Chromium exited 0 but wrote no screenshot at {png_path}", pytrace=False)
    return png_path


def dump_dom(html_path: Path, timeout: float = 90.0) -> str:
    """The page's DOM as Chromium parsed and laid it out (`--dump-dom`): proof it loaded our page, not an
    error page, with the title and text a reader sees."""
    return _run(["--dump-dom", _url(html_path)], "dumping the DOM", timeout).stdout


RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Pixels:
    """What a screenshot shows, as numbers; `array` is the image as (height, width, 3) uint8."""

    array: np.ndarray
    background: RGB  # the most common colour
    ink: float  # share of pixels that differ from the background
    colours: int  # distinct colours

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as PIL reports it."""
        return self.array.shape[1], self.array.shape[0]

    def mask(self, rgb: RGB, tolerance: int = 24) -> np.ndarray:
        """Where the colour is within `tolerance` of `rgb` in every channel (anti-aliasing blurs exact colours)."""
        return (np.abs(self.array.astype(np.int16) - np.array(rgb, dtype=np.int16)) <= tolerance).all(axis=2)

    def near(self, rgb: RGB, tolerance: int = 24) -> int:
        """How many pixels are within `tolerance` of `rgb`."""
        return int(self.mask(rgb, tolerance).sum())

    def vertical_lines(self, rgb: RGB, min_length: int, tolerance: int = 8) -> int:
        """Columns holding an unbroken vertical run of at least `min_length` pixels of `rgb`: rules, borders,
        plot axes; anti-aliased text never makes one."""
        return _runs(self.mask(rgb, tolerance), min_length)

    def horizontal_lines(self, rgb: RGB, min_length: int, tolerance: int = 8) -> int:
        """Rows holding an unbroken horizontal run of at least `min_length` pixels of `rgb`."""
        return _runs(self.mask(rgb, tolerance).T, min_length)


def _runs(mask: np.ndarray, min_length: int) -> int:
    """Columns of `mask` with a run of True at least `min_length` long."""
    run = np.zeros(mask.shape[1], dtype=np.int32)
    best = np.zeros_like(run)
    for row in mask:
        run = np.where(row, run + 1, 0)
        np.maximum(best, run, out=best)
    return int((best >= min_length).sum())


def analyse(png_path: Path) -> Pixels:
    """Background, ink share and distinct colours of a PNG, with its pixels for finer questions."""
    from PIL import Image  # matplotlib's dependency

    with Image.open(png_path) as im:
        array = np.asarray(im.convert("RGB"))
    flat = array.reshape(-1, 3)
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    top = int(counts.argmax())
    background = (int(colours[top][0]), int(colours[top][1]), int(colours[top][2]))
    return Pixels(
        array=array, background=background, ink=1 - float(counts[top]) / len(flat), colours=len(colours)
    )
