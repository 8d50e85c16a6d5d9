"""The wheel: one import root (`strop`), the migrations and package data inside, and no clash with another
library that owns a top-level `agents` (the OpenAI Agents SDK does).

The wheel is built from a copy of the working tree (so builds never race in the repo's own build/ folder),
installed with a stand-in `agents` distribution into a throw-away venv, and imported from outside the repo.
The throw-away venv reuses .venv's dependencies through a .pth line; such a line only adds a path, it does
not run that folder's own .pth files, so .venv's editable strop finder stays off and `strop` must come from
the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ROOMS = ("agents", "critics", "memory", "training", "sandbox")


def _package_dirs() -> dict[str, str]:
    return PYPROJECT["tool"]["setuptools"]["package-dir"]


def _copy_source(dest: Path) -> Path:
    """The files a build reads: top-level files (pyproject, README...) and each mapped package folder."""
    dest.mkdir()
    for p in ROOT.iterdir():
        if p.is_file():
            shutil.copy2(p, dest / p.name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for folder in sorted(set(_package_dirs().values())):
        shutil.copytree(ROOT / folder, dest / folder, ignore=ignore)
    return dest


def _pip(*args: str, cwd: Path | None = None) -> None:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"


def _build_wheel(src: Path, out: Path) -> Path:
    # The venv's own setuptools builds the wheel when it is new enough for pyproject.toml (the PEP 639 license
    # string needs setuptools >= 77); with an older one (`python3.11 -m venv` ships 65) or none, pip builds in
    # an isolated environment with a current setuptools from PyPI.
    try:
        recent = int(version("setuptools").split(".")[0]) >= 77
    except PackageNotFoundError:
        recent = False
    isolation = ["--no-build-isolation"] if recent else []
    _pip("wheel", str(src), "--no-deps", *isolation, "-w", str(out), "-q", cwd=src)
    [wheel] = out.glob("strop-*.whl")
    return wheel


def _standin_agents_wheel(out: Path) -> Path:
    """A minimal wheel of a distribution that installs a top-level `agents` package (like openai-agents)."""
    name, ver = "standin_agents", "1.0"
    dist_info = f"{name}-{ver}.dist-info"
    files = {
        "agents/__init__.py": "STANDIN = True\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: standin-agents\nVersion: {ver}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: strop-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist_info}/top_level.txt": "agents\n",
    }
    record = "".join(f"{path},,\n" for path in [*files, f"{dist_info}/RECORD"])
    path = out / f"{name}-{ver}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for arcname, text in {**files, f"{dist_info}/RECORD": record}.items():
            zf.writestr(arcname, text)
    return path


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    return _build_wheel(_copy_source(tmp / "src"), tmp / "dist")


@pytest.mark.slow
def test_wheel_has_one_import_root_and_ships_migrations_and_package_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert len(dist_info) == 1 and top - dist_info == {"strop"}, (
        f"top-level names in the wheel: {sorted(top)}"
    )
    assert not top & set(ROOMS)

    # Every module and data file of each mapped folder is in the wheel, under its strop.* name: a subpackage
    # missing from pyproject's explicit `packages` list, or a data pattern missing, would drop files silently.
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["*"]
    expected = set()
    for package, folder in _package_dirs().items():
        for p in (ROOT / folder).rglob("*"):
            if "__pycache__" in p.parts or not p.is_file():
                continue
            if p.suffix == ".py" or any(p.match(pat) for pat in patterns):
                expected.add("/".join([*package.split("."), *p.relative_to(ROOT / folder).parts]))
    assert expected - set(names) == set(), "files in the source tree missing from the wheel"

    migrations = "strop/memory/migrations/"
    assert f"{migrations}env.py" in names and f"{migrations}script.py.mako" in names
    versions = [
        n for n in names if n.startswith(f"{migrations}versions/") and n[-3:] == ".py" and "__init__" not in n
    ]
    assert len(versions) >= 2  # 0001_core_tables, 0002_embeddings, ...
    assert any(n.startswith("strop/cli/") for n in names)
    meta = zipfile.ZipFile(wheel).read(f"{dist_info.pop()}/entry_points.txt").decode()
    assert "strop = strop.cli:main" in meta


PROBE = """
import importlib, json, sys, tempfile, os
agents = importlib.import_module("agents")  # the other library's top-level package
import strop
spec = strop.get_loop("best_of_n")
from strop import Store, Runner, load_engine, load_task_set, BestOfNConfig
import strop.agents
db = os.path.join(tempfile.mkdtemp(), "probe.db")
store = Store(db)  # a new database at the head revision: the migrations shipped in the wheel
head = store.counts()
store.close()
print(json.dumps({
    "agents_file": agents.__file__, "standin": getattr(agents, "STANDIN", False),
    "strop_file": strop.__file__, "strop_agents_file": strop.agents.__file__,
    "loop": spec.name, "config": BestOfNConfig().n, "tasks": len(load_task_set("arithmetic").tasks("train", 2)),
    "runner": Runner.__module__, "load_engine": load_engine.__module__, "counts": head,
    "path": sys.path,
}))
"""


@pytest.mark.slow
def test_wheel_installs_beside_another_top_level_agents_and_imports_from_outside_the_repo(
    wheel: Path, tmp_path: Path
) -> None:
    env_dir = tmp_path / "throwaway"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    py = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # strop's dependencies come from .venv, appended after the throw-away site-packages.
    (site / "zz_strop_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _pip(
        "--python",
        str(py),
        "install",
        "--no-deps",
        "--no-index",
        "-q",
        str(wheel),
        str(_standin_agents_wheel(tmp_path)),
    )

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run(
        [str(py), "-I", "-c", PROBE], cwd=outside, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["standin"] is True and Path(got["agents_file"]).is_relative_to(site)
    assert Path(got["strop_file"]).is_relative_to(site), "strop did not come from the installed wheel"
    assert Path(got["strop_agents_file"]).is_relative_to(site / "strop")
    assert not any(Path(p).resolve() == ROOT for p in got["path"] if p)
    assert got["loop"] == "best_of_n" and got["config"] == 8 and got["tasks"] == 2
    assert got["runner"] == "strop.agents.runner" and got["load_engine"] == "strop.agents.engines"
    assert got["counts"] and set(got["counts"].values()) == {0}
