"""The loop registry: built-in loops, loops from other packages (the `strop.loops` entry-point group), and the
errors a user meets (a duplicate name, an unknown loop, a bad config field)."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from strop.agents.loops import registry
from strop.agents.loops.best_of_n import BestOfNConfig
from strop.agents.loops.registry import LoopSpec, UnknownLoopError, get_loop, list_loops, register_loop
from strop.cli import app
from strop.registry import NameClashError, Registry

PLUGIN = '''
"""A loop shipped by another package."""
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, Field

from strop.agents.loops.registry import LoopSpec
from strop.memory.records import ExampleKind, Role


class PluginConfig(BaseModel):
    rounds: int = Field(2, ge=1, description="How many rounds to play.")


class PluginState(TypedDict, total=False):
    task: dict[str, Any]
    episode: dict[str, Any]


def build_graph(engine: Any, config: PluginConfig | None = None) -> StateGraph:
    graph = StateGraph(PluginState)
    graph.add_node("noop", lambda state: {})
    graph.add_edge(START, "noop")
    graph.add_edge("noop", END)
    return graph


SPEC = LoopSpec(
    name="plugin_loop", config=PluginConfig,
    make=lambda resources, cfg: build_graph(resources.policy, cfg),
    roles=(Role.POLICY, Role.CRITIC), example_kinds=(ExampleKind.PAIR,),
    description="A plugin loop registered through the strop.loops entry-point group.",
)
'''


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry[LoopSpec]]:
    """A copy of the registry that is loaded again on first look-up; the real one is back after the test."""
    copy = registry.LOOPS.copy()
    monkeypatch.setattr(registry, "LOOPS", copy)
    yield copy


@pytest.fixture
def plugin_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: Registry) -> Iterator[Path]:
    """An installed-looking distribution on sys.path whose entry point names a LoopSpec."""
    module = "strop_test_plugin_loops"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(PLUGIN))
    dist = tmp_path / "strop_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: strop-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[strop.loops]\nplugin_loop = {module}:SPEC\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop(module, None)


def test_builtin_loops_are_registered_under_both_spellings() -> None:
    spec = get_loop("best-of-n")
    assert spec is get_loop("best_of_n") and spec.config is BestOfNConfig
    assert "best_of_n" in [s.name for s in list_loops()]


def test_a_package_adds_a_loop_through_the_entry_point_group(plugin_dist: Path) -> None:
    from importlib.metadata import entry_points

    assert [ep.value for ep in entry_points(group="strop.loops") if ep.name == "plugin_loop"] == [
        "strop_test_plugin_loops:SPEC"
    ]
    spec = get_loop("plugin-loop")
    assert spec.name == "plugin_loop" and spec.parse_config({"rounds": 3}).rounds == 3
    assert {s.name for s in list_loops()} >= {"best_of_n", "plugin_loop"}  # the built-ins are still there

    res = CliRunner().invoke(app, ["loops", "list"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "plugin_loop" in res.output and "policy, critic" in res.output and "pair" in res.output
    res = CliRunner().invoke(app, ["loops", "show", "plugin-loop"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "rounds" in res.output and "How many rounds to play." in res.output and "int (>= 1)" in res.output


def test_the_plugin_is_gone_once_its_test_is_over() -> None:
    with pytest.raises(UnknownLoopError):
        get_loop("plugin_loop")


def test_a_second_loop_under_a_taken_name_is_refused(fresh_registry: Registry) -> None:
    original = get_loop("best_of_n")
    impostor = LoopSpec(name="best-of-n", config=BestOfNConfig, make=original.make)
    with pytest.raises(NameClashError, match="already registered") as err:
        register_loop(impostor)
    # both origins are named: the built-in's module and this test module
    assert "module strop.agents.loops.best_of_n" in str(err.value) and __name__ in str(err.value)
    assert get_loop("best_of_n") is original
    register_loop(original)  # registering the same spec again is harmless (a module imported twice)
    assert register_loop(impostor, replace=True) is get_loop("best_of_n") is impostor


def test_an_unknown_loop_names_the_known_ones() -> None:
    with pytest.raises(UnknownLoopError) as err:
        get_loop("best-of-m")
    message = str(err.value)
    assert "'best-of-m'" in message and "best_of_n" in message and "strop loops list" in message


def test_parse_config_names_the_bad_field() -> None:
    spec = get_loop("best_of_n")
    assert spec.parse_config(None) == spec.default_config() == BestOfNConfig()
    assert spec.parse_config({"n": 4, "temperature": 0.5}).n == 4
    with pytest.raises(ValidationError) as err:
        spec.parse_config({"n": 0})
    assert [e["loc"] for e in err.value.errors()] == [("n",)] and "n\n" in str(err.value)
    with pytest.raises(ValidationError) as err:
        spec.parse_config({"nn": 3})
    assert err.value.errors()[0]["loc"] == ("nn",) and err.value.errors()[0]["type"] == "extra_forbidden"
