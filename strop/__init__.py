"""strop: language models that improve themselves.

The one import root. The design card's rooms are its subpackages (`strop.agents`, `strop.critics`,
`strop.memory`, `strop.training`, `strop.sandbox`), and what an embedding user needs is importable from here
in one line: `from strop import Store, load_engine, load_task_set, Runner, get_loop`.

Names load on first use (PEP 562), so `import strop` and `strop --help` stay instant: torch, transformers,
trl and SQLAlchemy are imported only by what needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Nothing global is set here (no environment variables, no logging): strop's own entry points set their
# process defaults (strop/_env.py), so an application that embeds strop keeps its settings.

__version__ = "0.2.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    # store
    "Store": "strop.memory.store",
    "to_dataset": "strop.memory.export",
    # what crosses the store boundary: a run, and the episode a loop returns in state["episode"]
    "RunRecord": "strop.memory.records",
    "EpisodeRecord": "strop.memory.records",
    "StepRecord": "strop.memory.records",
    "CritiqueRecord": "strop.memory.records",
    "ExampleRecord": "strop.memory.records",
    "ExampleKind": "strop.memory.records",
    "Role": "strop.memory.records",
    # engines and models
    "load_engine": "strop.agents.engines",
    "Engine": "strop.agents.engines.base",
    "GenerationRequest": "strop.agents.engines.base",
    "SamplingParams": "strop.agents.engines.base",
    "Message": "strop.agents.engines.base",
    "Completion": "strop.agents.engines.base",
    # tasks
    "load_task_set": "strop.sandbox.tasks",
    "Task": "strop.sandbox.tasks.base",
    "TaskSet": "strop.sandbox.tasks.base",
    "Split": "strop.sandbox.tasks.base",
    # loops and running them
    "Runner": "strop.agents.runner",
    "RunResult": "strop.agents.runner",
    "LoopSpec": "strop.agents.loops.registry",
    "LoopResources": "strop.agents.loops.registry",
    "get_loop": "strop.agents.loops.registry",
    "list_loops": "strop.agents.loops.registry",
    "register_loop": "strop.agents.loops.registry",
    "BestOfNConfig": "strop.agents.loops.best_of_n",
    "BestOfNState": "strop.agents.loops.best_of_n",
    "build_best_of_n": "strop.agents.loops.best_of_n",
    "episode_input": "strop.agents.loops.base",
    "evaluate": "strop.agents.evaluation",
    "EvalConfig": "strop.agents.evaluation",
    "EvalResult": "strop.agents.evaluation",
    # critics
    "Critic": "strop.critics.base",
    "Critique": "strop.critics.base",
    "CritiqueVerdict": "strop.critics.base",
    "VerifierCritic": "strop.critics.verifier",
    # training
    "Recipe": "strop.training.recipe",
    "load_recipe": "strop.training.recipe",
    "Evolution": "strop.training.evolve",
}
# names whose attribute in their module differs from the public one
_ALIAS = {"build_best_of_n": "build_graph"}

__all__ = [
    "BestOfNConfig",
    "BestOfNState",
    "Completion",
    "Critic",
    "Critique",
    "CritiqueRecord",
    "CritiqueVerdict",
    "Engine",
    "EpisodeRecord",
    "EvalConfig",
    "EvalResult",
    "Evolution",
    "ExampleKind",
    "ExampleRecord",
    "GenerationRequest",
    "LoopResources",
    "LoopSpec",
    "Message",
    "Recipe",
    "Role",
    "RunRecord",
    "RunResult",
    "Runner",
    "SamplingParams",
    "Split",
    "StepRecord",
    "Store",
    "Task",
    "TaskSet",
    "VerifierCritic",
    "__version__",
    "build_best_of_n",
    "episode_input",
    "evaluate",
    "get_loop",
    "list_loops",
    "load_engine",
    "load_recipe",
    "load_task_set",
    "register_loop",
    "to_dataset",
]

if TYPE_CHECKING:
    from strop.agents.engines import load_engine
    from strop.agents.engines.base import Completion, Engine, GenerationRequest, Message, SamplingParams
    from strop.agents.evaluation import EvalConfig, EvalResult, evaluate
    from strop.agents.loops.base import episode_input
    from strop.agents.loops.best_of_n import BestOfNConfig, BestOfNState
    from strop.agents.loops.best_of_n import build_graph as build_best_of_n
    from strop.agents.loops.registry import LoopResources, LoopSpec, get_loop, list_loops, register_loop
    from strop.agents.runner import Runner, RunResult
    from strop.critics.base import Critic, Critique, CritiqueVerdict
    from strop.critics.verifier import VerifierCritic
    from strop.memory.export import to_dataset
    from strop.memory.records import (
        CritiqueRecord,
        EpisodeRecord,
        ExampleKind,
        ExampleRecord,
        Role,
        RunRecord,
        StepRecord,
    )
    from strop.memory.store import Store
    from strop.sandbox.tasks import load_task_set
    from strop.sandbox.tasks.base import Split, Task, TaskSet
    from strop.training.evolve import Evolution
    from strop.training.recipe import Recipe, load_recipe


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), _ALIAS.get(name, name))
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'strop' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
