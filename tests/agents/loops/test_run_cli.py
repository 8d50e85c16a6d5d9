"""`strop run LOOP`: any registered loop from the command line, on the real tiny model and a real SQLite store,
and the one-line errors for an unknown loop, a bad `--set` field and a bad `--option`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from strop.agents.loops import registry
from strop.agents.loops.registry import LoopResources, LoopSpec, register_loop
from strop.cli import app
from strop.memory.records import EpisodeRecord, Role

cli = CliRunner()


def _invoke(*args: str) -> tuple[int, str]:
    res = cli.invoke(app, list(args), env={"COLUMNS": "200"})
    return res.exit_code, " ".join(res.output.split())


@pytest.mark.slow
def test_run_best_of_n_with_set_and_option_writes_its_episodes(tiny_model_path: Path, tmp_path: Path) -> None:
    from strop.memory import Store

    db = f"sqlite:///{tmp_path / 's.db'}"
    code, out = _invoke(
        "run",
        "best_of_n",
        "--model",
        "tiny",
        "--tasks",
        "arithmetic",
        "--episodes",
        "4",
        "--set",
        "n=2",
        "--set",
        "max_tokens=16",
        "--option",
        "digits=1",
        "--db",
        db,
    )
    assert code == 0, out
    assert "4 episodes, 8 answers" in out and re.search(r"\d+ SFT(/PAIR)? examples", out)
    run_id = re.search(r"run (\S+): best_of_n with tiny", out).group(1)  # type: ignore[union-attr]

    store = Store(db)
    run = store.get_run(run_id)
    assert run is not None and run.loop == "best_of_n" and run.config["task_options"] == {"digits": 1}
    assert run.config["loop"]["n"] == 2 and run.config["loop"]["max_tokens"] == 16
    episodes = store.list_episodes(run_id)
    assert len(episodes) == 4 and all(len(ep.steps) == 2 for ep in episodes)
    # digits=1 reached the task set: every operand in every prompt is a single digit
    tasks = _arithmetic_tasks(digits=1)
    assert all(max(len(x) for x in re.findall(r"\d+", t.prompt)) == 1 for t in tasks)
    assert {ep.task_id for ep in episodes} == {t.id for t in tasks}
    store.close()

    # The best-of-n shortcuts still work and mean --set; the same run id resumes (only 2 new episodes run).
    code, out = _invoke(
        "run",
        "best-of-n",
        "--model",
        "tiny",
        "--episodes",
        "6",
        "--n",
        "2",
        "--max-tokens",
        "16",
        "-o",
        "digits=1",
        "--run-id",
        run_id,
        "--db",
        db,
    )
    assert code == 0, out
    assert "6 episodes, 12 answers" in out and "pass@2" in out


def _arithmetic_tasks(**options: Any) -> list[Any]:
    from strop.sandbox.tasks import Split, load_task_set

    return load_task_set("arithmetic", **options).tasks(Split.TRAIN, 4)


class _RolesConfig(BaseModel):
    label: str = Field("x", description="Any text.")


class _RolesState(TypedDict, total=False):
    task: dict[str, Any]
    run_id: str
    episode_id: str
    episode: dict[str, Any]


SEEN: list[LoopResources] = []


def _roles_make(resources: LoopResources, cfg: _RolesConfig) -> StateGraph:
    SEEN.append(resources)

    def record(state: _RolesState) -> dict[str, Any]:
        ep = EpisodeRecord(
            id=state["episode_id"],
            run_id=state["run_id"],
            task_id=state["task"]["id"],
            loop="roles_loop",
            outcome={"label": cfg.label},
        )
        return {"episode": ep.model_dump(mode="json")}

    graph = StateGraph(_RolesState)
    graph.add_node("record", record)
    graph.add_edge(START, "record")
    graph.add_edge("record", END)
    return graph


@pytest.fixture
def roles_loop(monkeypatch: pytest.MonkeyPatch) -> LoopSpec:
    """A loop that declares a critic role, registered for one test."""
    registry.list_loops()  # load the built-ins first, into the copy below
    monkeypatch.setattr(registry, "LOOPS", registry.LOOPS.copy())
    SEEN.clear()
    return register_loop(
        LoopSpec(
            name="roles_loop",
            config=_RolesConfig,
            make=_roles_make,
            roles=(Role.POLICY, Role.CRITIC),
            description="Records which engine plays which role.",
        )
    )


@pytest.mark.slow
def test_any_registered_loop_runs_and_the_critic_defaults_to_the_policy(
    roles_loop: LoopSpec, tiny_model_path: Path, tmp_path: Path
) -> None:
    from strop.memory import Store

    db = f"sqlite:///{tmp_path / 's.db'}"
    code, out = _invoke(
        "run", "roles-loop", "--model", "tiny", "--episodes", "3", "--set", "label=7", "--db", db
    )
    assert code == 0, out
    assert "roles_loop with tiny, critic tiny" in out and "3 episodes" in out
    [resources] = SEEN
    assert set(resources.engines) == {"policy", "critic"}
    assert resources.engine(Role.CRITIC) is resources.policy  # self-critique: one engine plays both roles
    assert resources.store is not None and resources.task_set.name == "arithmetic"
    store = Store(db)
    [run] = store.list_runs(loop="roles_loop")
    [policy_id] = run.model_ids
    assert run.config["roles"] == {"policy": policy_id, "critic": policy_id}
    # '7' parsed as JSON is a number; the str field gets the text back
    assert {ep.outcome["label"] for ep in store.list_episodes(run.id)} == {"7"}
    store.close()

    code, out = _invoke("run", "roles_loop", "--model", "tiny", "--critic", "no-such-critic", "--db", db)
    assert code == 1 and "--critic no-such-critic" in out


def test_an_unknown_loop_says_which_loops_exist(tmp_path: Path) -> None:
    code, out = _invoke("run", "best-of-m", "--model", "tiny", "--db", f"sqlite:///{tmp_path / 's.db'}")
    assert (
        code == 1 and "unknown loop 'best-of-m'" in out and "best_of_n" in out and "strop loops list" in out
    )
    code, out = _invoke("loops", "show", "nope")
    assert code == 1 and "unknown loop 'nope'" in out


def test_a_bad_set_names_the_field_and_the_show_command(tmp_path: Path) -> None:
    db = ["--db", f"sqlite:///{tmp_path / 's.db'}"]
    for args, expected in [
        (["--set", "nn=3"], "no config field 'nn'"),
        (["--set", "n=0"], "--set n=0: Input should be greater than or equal to 1"),
        (["--set", "temperature=hot"], "--set temperature='hot'"),
        (["--set", "n"], "'n' is not KEY=VALUE"),
        (["--n", "2", "--set", "n=3"], "--n and --set n=... both given"),
        (["--critic", "tiny"], "no critic role"),
    ]:
        code, out = _invoke("run", "best-of-n", "--model", "tiny", *args, *db)
        assert code == 1, (args, out)
        assert expected in out, (args, out)
        assert out.count("error:") == 1 and len(out) < 400, out  # one line
        if args[0] == "--set":
            assert "strop loops show best_of_n" in out


def test_a_bad_option_names_it(tmp_path: Path) -> None:
    db = ["--db", f"sqlite:///{tmp_path / 's.db'}"]
    for args, expected in [
        (["--option", "nope=1"], "no option(s) ['nope']"),
        (["--option", "digits=0"], "digits must be 1..9"),
        (["-o", "digits=x"], "digits='x'"),
        (["--option", "digits"], "'digits' is not KEY=VALUE"),
    ]:
        for command in (["run", "best-of-n"], ["eval"]):
            code, out = _invoke(*command, "--model", "tiny", *args, *db)
            assert code == 1 and expected in out and "--option" in out, (command, args, out)
    # A task set that needs an option says so.
    code, out = _invoke("run", "best-of-n", "--model", "tiny", "--tasks", "jsonl", *db)
    assert code == 1 and "path=" in out
    # ... and a missing file fails before any model loads (and before the store is opened).
    code, out = _invoke(
        "run", "best-of-n", "--model", "tiny", "--tasks", "jsonl", "-o", f"path={tmp_path}/no.jsonl", *db
    )
    assert code == 1 and "no.jsonl does not exist" in out
    assert not (tmp_path / "s.db").exists()


def test_loops_list_and_show(tmp_path: Path) -> None:
    code, out = _invoke("loops", "list")
    assert code == 0 and "best_of_n" in out and "policy" in out and "sft" in out
    code, out = _invoke("loops", "show", "best-of-n")
    assert code == 0, out
    for text in ("n", "int (>= 1, <= 256)", "Answers sampled per task.", "list[str]", "system_prompt", "0.8"):
        assert text in out, text
    code, out = _invoke("run", "--help")
    assert code == 0 and "--set" in out and "--option" in out and "strop loops show" in out and "--n" in out
