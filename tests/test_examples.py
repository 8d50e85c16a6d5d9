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


@pytest.mark.slow
def test_langgraph_react_agent_is_captured_and_taught_by_the_agent_loop(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """The ReAct example as a user runs it with `strop run agent`: its LangGraph graph, unchanged, talks to the
    episode's base URL; with the example's teacher every call of a correct rollout becomes an SFT example whose
    prompt is what the agent sent (the calculator tool rendered in the policy's format)."""
    from strop import Store

    db = tmp_path / "agent.db"
    example = ROOT / "examples" / "langgraph_react_agent.py"
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("strop")),
            "run",
            "agent",
            "-m",
            "tiny",
            "-o",
            "word_problems=true",
            "--set",
            f"entry={example}:solve",
            "--set",
            f"teacher={example}:teacher",
            "--set",
            "emit_sft=true",
            "--set",
            "n=1",
            "--episodes",
            "3",
            "--db",
            str(db),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    store = Store(str(db), create=False)
    try:
        [run] = store.list_runs()
        episodes = store.list_episodes(run.id)
        assert len(episodes) == 3
        for ep in episodes:
            assert ep.outcome["correct"] == 1 and ep.outcome["valid_tool_calls"] == 1, ep.outcome
            assert len(ep.steps) == 2 and all(s.token_ids and s.prompt_token_ids for s in ep.steps)
            call, answer = sorted(ep.examples, key=lambda x: len(x.payload["prompt"]))
            assert "calculator" in call.payload["prompt"][0]["content"]  # the tool, rendered for the policy
            assert call.payload["completion"][0]["content"].startswith("<tool_call>")
            assert answer.payload["prompt"][-1]["content"].startswith("<tool_response>")
    finally:
        store.close()
