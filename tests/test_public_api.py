"""The public API: what an embedding user imports from `strop` in one line, and what `import strop` costs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import strop

HEAVY = ("torch", "transformers", "trl", "sqlalchemy")

# What a user who embeds a strop loop in their own LangGraph app needs (docs/library.md walks through it).
EMBEDDING = (
    "build_best_of_n",
    "BestOfNConfig",
    "BestOfNState",
    "get_loop",
    "list_loops",
    "register_loop",
    "LoopSpec",
    "LoopResources",
    "episode_input",
    "Store",
    "RunRecord",
    "EpisodeRecord",
    "load_engine",
    "Engine",
    "load_task_set",
    "Task",
    "TaskSet",
    "Split",
    "Runner",
    "RunResult",
    "evaluate",
    "Critic",
    "Critique",
    "VerifierCritic",
)

# What a user writing a loop of their own needs, so it imports nothing internal (docs/loops.md's example).
LOOP_AUTHOR = (
    "EpisodeInput",
    "episode_id",
    "stable_id",
    "task_messages",
    "chat_request",
    "completion_json",
    "run_episode",
)

# Each registry's list/get/register, from its own module (one registry type: strop.registry).
REGISTRIES = {
    "strop.agents.loops.registry": ("list_loops", "get_loop", "register_loop"),
    "strop.training.trainers": ("list_trainers", "get_trainer", "register_trainer"),
    "strop.sandbox.tasks.registry": ("list_task_sets", "get_task_set", "register_task_set"),
    "strop.sandbox.games.registry": ("list_games", "get_game", "register_game"),
    "strop.critics.registry": ("list_critics", "get_critic", "register_critic"),
}


def _fresh(code: str) -> dict:
    """Run `code` in a new interpreter (nothing imported yet) and return the JSON it prints last."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", strop.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(strop, name) is not None
    if name != "__version__":
        assert name in strop._LAZY, f"{name} is in __all__ but not in _LAZY"


def test_the_lazy_table_and_all_agree() -> None:
    assert set(strop._LAZY) == set(strop.__all__) - {"__version__"}
    assert set(dir(strop)) >= set(strop.__all__)
    assert set(EMBEDDING) <= set(strop.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        strop.nope  # noqa: B018


def test_public_names_are_the_package_objects() -> None:
    from strop.agents.loops import best_of_n
    from strop.agents.loops.registry import get_loop
    from strop.memory.store import Store

    assert strop.build_best_of_n is best_of_n.build_graph  # the module's own builder, not a spec field
    assert not hasattr(get_loop("best_of_n"), "build_graph")  # one builder contract: `make`
    assert strop.BestOfNConfig is get_loop("best_of_n").config
    assert strop.Store is Store


def test_loop_authors_and_registries_need_no_internal_import() -> None:
    import importlib

    from strop.registry import Registry, UnknownNameError

    assert set(LOOP_AUTHOR) <= set(strop.__all__)
    for module, names in REGISTRIES.items():
        for name in names:
            assert getattr(strop, name) is getattr(importlib.import_module(module), name), name
    assert strop.Registry is Registry and strop.UnknownNameError is UnknownNameError


def test_import_strop_loads_no_heavy_library() -> None:
    loaded = _fresh(f"import sys, json, strop; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    assert loaded == [], f"`import strop` imported {loaded}; keep them behind the lazy names"


@pytest.mark.slow
def test_building_a_loop_needs_no_torch() -> None:
    # The loop, the store and the runner are plain Python over LangGraph and SQLAlchemy; torch, transformers
    # and trl load only when a model engine or a trainer is actually built.
    code = (
        "import sys, json\n"
        f"from strop import {', '.join(EMBEDDING)}\n"
        "get_loop('best_of_n')\n"
        "print(json.dumps([m for m in ('torch', 'transformers', 'trl') if m in sys.modules]))"
    )
    assert _fresh(code) == []


def test_import_strop_leaves_the_environment_alone() -> None:
    """An application that embeds strop keeps its own hub access and thread settings (strop/_env.py)."""
    out = _fresh(
        "import json, os\n"
        "for k in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', 'HF_DATASETS_OFFLINE', 'OMP_WAIT_POLICY'):\n"
        "    os.environ.pop(k, None)\n"
        "before = dict(os.environ)\n"
        "import strop\n"
        "strop.Store, strop.load_engine, strop.Evolution  # lazy names import the rooms\n"
        "after = dict(os.environ)\n"
        "print(json.dumps({'changed': sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))}))"
    )
    assert out["changed"] == []


def test_the_cli_sets_its_process_defaults() -> None:
    out = _fresh(
        "import json, os\n"
        "os.environ.pop('HF_HUB_OFFLINE', None); os.environ['OMP_WAIT_POLICY'] = 'ACTIVE'\n"
        "import sys; sys.argv = ['strop', '--help']\n"
        "from strop.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(json.dumps({k: os.environ.get(k) for k in ('HF_HUB_OFFLINE', 'OMP_WAIT_POLICY')}))"
    )
    assert out == {"HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "ACTIVE"}  # a value the user set wins
