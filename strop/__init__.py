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
    # registries: one type, one unknown-name error
    "Registry": "strop.registry",
    "UnknownNameError": "strop.registry",
    # tasks
    "load_task_set": "strop.sandbox.tasks",
    "get_task_set": "strop.sandbox.tasks.registry",
    "list_task_sets": "strop.sandbox.tasks.registry",
    "register_task_set": "strop.sandbox.tasks.registry",
    "TaskSetInfo": "strop.sandbox.tasks.registry",
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
    # what a loop of your own needs (docs/loops.md)
    "episode_input": "strop.agents.loops.base",
    "EpisodeInput": "strop.agents.loops.base",
    "episode_id": "strop.agents.loops.base",
    "stable_id": "strop.agents.loops.base",
    "task_messages": "strop.agents.loops.base",
    "chat_request": "strop.agents.loops.base",
    "completion_json": "strop.agents.loops.base",
    "run_episode": "strop.agents.episode",
    # bring your own agent: episodes captured for an agent you wrote (docs/agents.md)
    "AgentRun": "strop.agents.capture.agent_run",
    "AgentEpisode": "strop.agents.capture.agent_run",
    "AgentLoopConfig": "strop.agents.loops.agent",
    "evaluate": "strop.agents.evaluation",
    "EvalConfig": "strop.agents.evaluation",
    "EvalResult": "strop.agents.evaluation",
    # critics
    "Critic": "strop.critics.base",
    "Critique": "strop.critics.base",
    "CritiqueVerdict": "strop.critics.base",
    "VerifierCritic": "strop.critics.verifier",
    "get_critic": "strop.critics.registry",
    "list_critics": "strop.critics.registry",
    "register_critic": "strop.critics.registry",
    "make_critic": "strop.critics.registry",
    "CriticKind": "strop.critics.registry",
    # games
    "get_game": "strop.sandbox.games.registry",
    "list_games": "strop.sandbox.games.registry",
    "register_game": "strop.sandbox.games.registry",
    "GameKind": "strop.sandbox.games.registry",
    # training
    "Recipe": "strop.training.recipe",
    "load_recipe": "strop.training.recipe",
    "Evolution": "strop.training.evolve",
    "get_trainer": "strop.training.trainers",
    "list_trainers": "strop.training.trainers",
    "register_trainer": "strop.training.trainers",
    "TrainerKind": "strop.training.trainers",
    "TrainRequest": "strop.training.trainers",
    "TrainOutcome": "strop.training.trainers",
    "TrainerSettings": "strop.training.settings",
    "LoraSettings": "strop.training.settings",
    "EvalSettings": "strop.agents.evaluators",
    "EvalContext": "strop.agents.evaluators",
    "Evaluator": "strop.agents.evaluators",
    "EvaluatorDefaults": "strop.agents.evaluators",
    "get_evaluator": "strop.agents.evaluators",
    "list_evaluators": "strop.agents.evaluators",
    "register_evaluator": "strop.agents.evaluators",
}
# names whose attribute in their module differs from the public one
_ALIAS = {"build_best_of_n": "build_graph"}

__all__ = [
    "AgentEpisode",
    "AgentLoopConfig",
    "AgentRun",
    "BestOfNConfig",
    "BestOfNState",
    "Completion",
    "Critic",
    "CriticKind",
    "Critique",
    "CritiqueRecord",
    "CritiqueVerdict",
    "Engine",
    "EpisodeInput",
    "EpisodeRecord",
    "EvalConfig",
    "EvalContext",
    "EvalResult",
    "EvalSettings",
    "Evaluator",
    "EvaluatorDefaults",
    "Evolution",
    "ExampleKind",
    "ExampleRecord",
    "GameKind",
    "GenerationRequest",
    "LoopResources",
    "LoopSpec",
    "LoraSettings",
    "Message",
    "Recipe",
    "Registry",
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
    "TaskSetInfo",
    "TrainOutcome",
    "TrainRequest",
    "TrainerKind",
    "TrainerSettings",
    "UnknownNameError",
    "VerifierCritic",
    "__version__",
    "build_best_of_n",
    "chat_request",
    "completion_json",
    "episode_id",
    "episode_input",
    "evaluate",
    "get_critic",
    "get_evaluator",
    "get_game",
    "get_loop",
    "get_task_set",
    "get_trainer",
    "list_critics",
    "list_evaluators",
    "list_games",
    "list_loops",
    "list_task_sets",
    "list_trainers",
    "load_engine",
    "load_recipe",
    "load_task_set",
    "make_critic",
    "register_critic",
    "register_evaluator",
    "register_game",
    "register_loop",
    "register_task_set",
    "register_trainer",
    "run_episode",
    "stable_id",
    "task_messages",
    "to_dataset",
]

if TYPE_CHECKING:
    from strop.agents.capture.agent_run import AgentEpisode, AgentRun
    from strop.agents.engines import load_engine
    from strop.agents.engines.base import Completion, Engine, GenerationRequest, Message, SamplingParams
    from strop.agents.episode import run_episode
    from strop.agents.evaluation import EvalConfig, EvalResult, evaluate
    from strop.agents.evaluators import (
        EvalContext,
        EvalSettings,
        Evaluator,
        EvaluatorDefaults,
        get_evaluator,
        list_evaluators,
        register_evaluator,
    )
    from strop.agents.loops.agent import AgentLoopConfig
    from strop.agents.loops.base import (
        EpisodeInput,
        chat_request,
        completion_json,
        episode_id,
        episode_input,
        stable_id,
        task_messages,
    )
    from strop.agents.loops.best_of_n import BestOfNConfig, BestOfNState
    from strop.agents.loops.best_of_n import build_graph as build_best_of_n
    from strop.agents.loops.registry import LoopResources, LoopSpec, get_loop, list_loops, register_loop
    from strop.agents.runner import Runner, RunResult
    from strop.critics.base import Critic, Critique, CritiqueVerdict
    from strop.critics.registry import CriticKind, get_critic, list_critics, make_critic, register_critic
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
    from strop.registry import Registry, UnknownNameError
    from strop.sandbox.games.registry import GameKind, get_game, list_games, register_game
    from strop.sandbox.tasks import load_task_set
    from strop.sandbox.tasks.base import Split, Task, TaskSet
    from strop.sandbox.tasks.registry import TaskSetInfo, get_task_set, list_task_sets, register_task_set
    from strop.training.evolve import Evolution
    from strop.training.recipe import Recipe, load_recipe
    from strop.training.settings import LoraSettings, TrainerSettings
    from strop.training.trainers import (
        TrainerKind,
        TrainOutcome,
        TrainRequest,
        get_trainer,
        list_trainers,
        register_trainer,
    )


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), _ALIAS.get(name, name))
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'strop' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
