"""The examples run as a user runs them: a fresh interpreter, outside the repository, on the tiny model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_embed_best_of_n_runs_the_loop_in_a_users_graph_and_fills_the_store(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    from strop import Store

    db = tmp_path / "embed.db"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "embed_best_of_n.py"), str(db), "--tasks", "3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    reports = [line for line in proc.stdout.splitlines() if "->" in line]
    assert len(reports) == 3 and all(line.endswith("/8 correct") for line in reports), proc.stdout

    store = Store(str(db), create=False)
    try:
        [run] = store.list_runs()
        assert run.loop == "best_of_n" and run.status == "finished" and run.model_ids == ["tiny"]
        episodes = store.list_episodes(run.id)
        assert len(episodes) == 3 and len({e.task_id for e in episodes}) == 3
        for ep in episodes:
            assert ep.loop == "best_of_n" and ep.outcome["n"] == 8
            assert len(ep.steps) == 8 and len(ep.critiques) == 8
            assert all(s.model_version == "tiny" and s.token_ids for s in ep.steps)
            assert len(ep.examples) == ep.outcome["examples"]  # the correct answers, as SFT examples
        assert store.counts()["episodes"] == 3
    finally:
        store.close()
