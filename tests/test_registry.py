"""The one registry type (strop.registry) and the five registries built on it: unknown names, clashes,
explicit replacement, entry points (good and bad), lazy and thread-safe loading, and docs/loops.md's loop,
which imports only from `strop`."""

from __future__ import annotations

import ast
import re
import sys
import textwrap
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import strop
import strop.registry
from strop.registry import EntryPointError, NameClashError, Registry, UnknownNameError, underscores

ROOT = Path(__file__).resolve().parents[1]
GROUP = "strop.test_things"


@dataclass(frozen=True)
class Thing:
    name: str


class UnknownThingError(UnknownNameError):
    """A concept's own error, as UnknownLoopError is for loops."""


def things(**settings: Any) -> Registry[Thing]:
    return Registry(
        "thing",
        Thing,
        name_of=lambda t: t.name,
        normalize=underscores,
        list_command="strop things list",
        error=UnknownThingError,
        **settings,
    )


@pytest.fixture
def holder(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """An importable module that plugin and built-in modules written by the tests reach the registry through."""
    module = types.ModuleType("strop_test_holder")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


def plugin(monkeypatch: pytest.MonkeyPatch, name: str, **attrs: Any) -> None:
    """A module named `name` holding `attrs`, importable by entry points."""
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    monkeypatch.setitem(sys.modules, name, module)


def entry_points(monkeypatch: pytest.MonkeyPatch, **eps: str) -> None:
    """The installed entry points of GROUP, as `importlib.metadata.entry_points(group=...)` returns them."""
    real = metadata.entry_points

    def fake(**params: Any) -> Any:
        if params.get("group") == GROUP:
            return [metadata.EntryPoint(name, value, GROUP) for name, value in eps.items()]
        return real(**params)

    monkeypatch.setattr(metadata, "entry_points", fake)


# --- names -------------------------------------------------------------------------------------------------------


def test_an_unknown_name_lists_the_known_ones_and_the_command() -> None:
    reg = things()
    reg.register("b-thing", Thing("b_thing"))
    reg.register("a_thing", Thing("a_thing"))
    with pytest.raises(UnknownThingError) as err:
        reg.get("c-thing")
    assert isinstance(err.value, UnknownNameError) and isinstance(err.value, KeyError)
    assert str(err.value) == (
        "unknown thing 'c-thing'; known things: a_thing, b_thing (see `strop things list`)"
    )
    assert err.value.name == "c-thing" and err.value.known == ["a_thing", "b_thing"]
    assert reg.get("b-thing") is reg.get("b_thing")  # normalised: one name, two spellings
    assert "a-thing" in reg and "c_thing" not in reg


def test_names_keep_registration_order_when_asked() -> None:
    reg = things(sort=False)
    for n in ("zeta", "alpha"):
        reg.register(n, Thing(n))
    assert reg.names() == ["zeta", "alpha"] and [t.name for t in reg.list()] == ["zeta", "alpha"]


def test_a_clash_names_both_origins_and_replace_is_explicit() -> None:
    reg = things()
    first, second = Thing("x"), Thing("x")
    reg.register("x", first, origin="module first_pkg")
    reg.register("x", first)  # the same object again (a module imported twice): harmless
    with pytest.raises(NameClashError, match="already registered") as err:
        reg.register("x", second)
    assert "module first_pkg" in str(err.value) and f"module {__name__}" in str(err.value)
    assert reg.get("x") is first
    assert reg.register("x", second, replace=True) is reg.get("x") is second
    assert reg.origin("x") == f"module {__name__}"


def test_only_the_registrys_type_is_held() -> None:
    with pytest.raises(TypeError, match="holds a Thing; got a str"):
        things().register("x", "not a thing")  # type: ignore[arg-type]


def test_a_copy_is_independent() -> None:
    reg = things()
    reg.register("x", Thing("x"))
    copy = reg.copy()
    copy.register("y", Thing("y"))
    copy.unregister("x")
    assert reg.names() == ["x"] and copy.names() == ["y"]


# --- entry points ------------------------------------------------------------------------------------------------


def test_entry_points_name_an_item_a_factory_or_a_module(
    monkeypatch: pytest.MonkeyPatch, holder: types.ModuleType, tmp_path: Path
) -> None:
    reg = things(entry_point_group=GROUP)
    holder.REG, holder.Thing = reg, Thing
    plugin(monkeypatch, "strop_test_items", ITEM=Thing("from_item"), make=lambda: Thing("from_factory"))
    (tmp_path / "strop_test_self_registering.py").write_text(
        "import strop_test_holder as h\nh.REG.register('from_module', h.Thing('from_module'))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "strop_test_self_registering", raising=False)
    entry_points(
        monkeypatch,
        item="strop_test_items:ITEM",
        factory="strop_test_items:make",
        module="strop_test_self_registering",
    )
    assert reg.names() == ["from_factory", "from_item", "from_module"]
    assert reg.origin("from_item") == f"entry point 'item' = 'strop_test_items:ITEM' (group {GROUP})"
    assert reg.origin("from_module").startswith("entry point 'module'")  # a module registering itself too


@pytest.mark.parametrize(
    ("attr", "got"),
    [("make_wrong", r"a function \S*make_wrong, which returned a str;"), ("TEXT", "a str;")],
)
def test_an_entry_point_of_the_wrong_type_is_an_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, attr: str, got: str
) -> None:
    def make_wrong() -> str:
        return "a thing, surely"

    plugin(monkeypatch, "strop_test_wrong", make_wrong=make_wrong, TEXT="text")
    entry_points(monkeypatch, wrong=f"strop_test_wrong:{attr}")
    reg = things(entry_point_group=GROUP)
    with pytest.raises(EntryPointError) as err:
        reg.get("anything")
    message = str(err.value)
    assert f"entry point 'wrong' = 'strop_test_wrong:{attr}' (group {GROUP})" in message
    assert re.search(f"gave {got}", message) and "it must name a Thing" in message


def test_a_plugin_cannot_take_a_built_in_name_unless_it_asks(
    monkeypatch: pytest.MonkeyPatch, holder: types.ModuleType
) -> None:
    impostor = Thing("best")

    def make() -> Thing:
        return impostor

    plugin(monkeypatch, "strop_test_clash", make=make)
    entry_points(monkeypatch, best="strop_test_clash:make")
    reg = things(entry_point_group=GROUP)
    builtin = reg.register("best", Thing("best"), origin="module strop_test_builtins")
    with pytest.raises(NameClashError) as err:
        reg.get("best")
    message = str(err.value)
    assert "already registered by module strop_test_builtins" in message
    assert f"entry point 'best' = 'strop_test_clash:make' (group {GROUP}) cannot register" in message
    with pytest.raises(NameClashError):  # still refused on the next look-up: the load is retried
        reg.get("other")

    make.replace = True  # type: ignore[attr-defined]  # the plugin asks to replace
    replaced = reg.copy()
    assert replaced.get("best") is impostor and builtin is not impostor
    assert replaced.origin("best").startswith("entry point 'best'")


def test_a_loop_plugin_reusing_a_built_in_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop registry used to let an entry point replace a built-in loop silently."""
    from strop.agents.loops import registry

    original = registry.get_loop("best_of_n")
    impostor = strop.LoopSpec(name="best-of-n", config=original.config, make=original.make)
    plugin(monkeypatch, "strop_test_loop_plugin", SPEC=impostor)
    real = metadata.entry_points
    monkeypatch.setattr(
        metadata,
        "entry_points",
        lambda **p: (
            [metadata.EntryPoint("bon", "strop_test_loop_plugin:SPEC", "strop.loops")]
            if p.get("group") == "strop.loops"
            else real(**p)
        ),
    )
    monkeypatch.setattr(registry, "LOOPS", registry.LOOPS.copy())
    with pytest.raises(NameClashError) as err:
        registry.get_loop("best_of_n")
    assert "already registered by module strop.agents.loops.best_of_n" in str(err.value)
    assert "entry point 'bon' = 'strop_test_loop_plugin:SPEC' (group strop.loops)" in str(err.value)


# --- lazy loading ------------------------------------------------------------------------------------------------


@pytest.fixture
def builtin_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, holder: types.ModuleType
) -> Iterator[str]:
    """A built-in module on sys.path that registers one Thing through `holder.REG` when imported."""
    name = "strop_test_builtin_things"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import strop_test_holder

            strop_test_holder.IMPORTS = getattr(strop_test_holder, "IMPORTS", 0) + 1
            strop_test_holder.REG.register("lazy", strop_test_holder.Thing("lazy"))
            """
        )
    )
    holder.Thing = Thing
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_built_in_modules_load_on_the_first_look_up(builtin_module: str, holder: types.ModuleType) -> None:
    reg = things(builtin_modules=(builtin_module,))
    holder.REG = reg
    assert builtin_module not in sys.modules  # building the registry imports nothing
    assert reg.get("lazy") == Thing("lazy") and holder.IMPORTS == 1
    assert reg.origin("lazy") == f"module {builtin_module}"
    assert reg.names() == ["lazy"] and holder.IMPORTS == 1  # once


def test_a_failed_built_in_import_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    reg = things(builtin_modules=("strop_test_flaky",))

    def import_module(name: str) -> None:
        calls.append(name)
        if len(calls) == 1:
            raise ImportError("flaky")
        reg.register("ok", Thing("ok"))

    monkeypatch.setattr(strop.registry, "importlib", types.SimpleNamespace(import_module=import_module))
    with pytest.raises(ImportError, match="flaky"):
        reg.get("ok")
    assert reg.get("ok") == Thing("ok") and len(calls) == 2


def test_first_look_ups_on_two_threads_both_wait_for_the_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = things(builtin_modules=("strop_test_slow",))

    def import_module(name: str) -> None:  # importing the built-ins takes a while
        time.sleep(0.2)
        reg.register("slow", Thing("slow"))

    monkeypatch.setattr(strop.registry, "importlib", types.SimpleNamespace(import_module=import_module))
    found: list[Any] = []

    def look_up() -> None:
        try:
            found.append(reg.get("slow"))
        except BaseException as e:  # reported by the test thread
            found.append(e)

    threads = [threading.Thread(target=look_up, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.05)  # the second look-up lands while the first is importing
    for t in threads:
        t.join(timeout=10)
    assert found == [Thing("slow"), Thing("slow")]


# --- the five registries -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("get", "error", "known"),
    [
        ("get_loop", "UnknownLoopError", "best_of_n"),
        ("get_trainer", "UnknownTrainerError", "sft"),
        ("get_task_set", "UnknownTaskSetError", "arithmetic"),
        ("get_game", "UnknownGameError", "kuhn_poker"),
        ("get_critic", "UnknownCriticError", "stepwise"),
    ],
)
def test_every_registry_raises_the_one_error(get: str, error: str, known: str) -> None:
    with pytest.raises(UnknownNameError) as err:
        getattr(strop, get)("no-such-name")
    assert type(err.value).__name__ == error and known in err.value.known and known in str(err.value)
    assert getattr(strop, get)(known).name == known


def test_make_critic_builds_each_kind_and_names_what_is_missing() -> None:
    from strop.critics import ContrastiveCritic, PairwiseJudge, StepScorer, StepwiseCritic, VerifierCritic

    tasks = strop.load_task_set("arithmetic")
    engine = object()
    assert isinstance(strop.make_critic("verifier", task_set=tasks, offload=True), VerifierCritic)
    assert isinstance(strop.make_critic("stepwise", engine=engine, shots=0), StepwiseCritic)
    assert isinstance(strop.make_critic("contrastive", engine=engine), ContrastiveCritic)
    assert isinstance(strop.make_critic("pairwise", engine=engine), PairwiseJudge)
    assert strop.make_critic("prm", engine=engine, threshold=0.3).threshold == 0.3
    assert isinstance(strop.make_critic("prm", engine=engine), StepScorer)
    with pytest.raises(ValueError, match="the stepwise critic needs engine"):
        strop.make_critic("stepwise")
    with pytest.raises(ValueError, match="the verifier critic needs task_set"):
        strop.make_critic("verifier")


# --- docs/loops.md's loop ----------------------------------------------------------------------------------------


def _docs_loop() -> str:
    text = (ROOT / "docs" / "loops.md").read_text()
    [block] = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "register_loop(" in b]
    return block


def test_the_docs_loop_imports_only_from_strop() -> None:
    imported = set()
    for node in ast.walk(ast.parse(_docs_loop())):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    assert {m for m in imported if m.startswith("strop")} == {"strop"}, imported
    assert imported <= {"__future__", "typing", "langgraph.graph", "pydantic", "strop"}, imported


async def test_the_docs_loop_registers_and_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from strop.agents.loops import registry
    from tests.agents.loops.fakes import ScriptedEngine, right_then_wrong

    monkeypatch.setattr(registry, "LOOPS", registry.LOOPS.copy())
    module = types.ModuleType("strop_docs_retry")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(_docs_loop(), "docs/loops.md", "exec"), module.__dict__)

    spec = strop.get_loop("retry")
    assert spec is module.SPEC and registry.LOOPS.origin("retry") == "module strop_docs_retry"
    tasks = strop.load_task_set("arithmetic")
    task = tasks.tasks(strop.Split.TRAIN, 1)[0]
    for answer, want in ((right_then_wrong, (1, True, 1)), (lambda p, i: "#### -999", (2, False, 0))):
        resources = strop.LoopResources(engines={"policy": ScriptedEngine(answer)}, task_set=tasks)
        graph = spec.make(resources, spec.parse_config({"tries": 2}))
        episode = await strop.run_episode(graph, task, "docs-run")
        assert (episode.outcome["n"], episode.outcome["pass"], len(episode.examples)) == want
