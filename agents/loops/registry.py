"""The loop registry: every loop strop can run, by name, with what it needs and what it emits.

A loop is one module in `strop.agents.loops` that ends with `register_loop(LoopSpec(...))`. The CLI
(`strop run LOOP`, `strop loops list`), recipes (a stage names its loop) and the docs read this registry, so a
new loop needs no other wiring. Other packages add loops through the `strop.loops` entry-point group: the
entry point names a `LoopSpec` (`my_pkg.loops:SPEC`), a function returning one, or a module that registers
its loop on import. A plugin that reuses a taken name is refused, naming both origins, unless it asks to
replace (strop.registry has the rules every registry shares).

A spec has one builder contract, `make(LoopResources, config)`: a recipe stage, the CLI and a user build
every loop from the same uniform resources, without knowing its signature. Each loop module also keeps its
own `build_graph(...)` with the arguments that loop really needs (an engine, a critic, a config), a plain
module function for users who wire a loop by hand; the registry does not know it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from langgraph.graph import StateGraph
from pydantic import BaseModel

from strop.agents.engines.base import Engine
from strop.memory.records import EpisodeRecord, ExampleKind, Role
from strop.registry import Registry, UnknownNameError, underscores
from strop.sandbox.tasks.base import TaskSet

ENTRY_POINT_GROUP = "strop.loops"
# strop's own loops, imported on first look-up (each module registers itself).
_BUILTIN_MODULES = (
    "strop.agents.loops.best_of_n",
    "strop.agents.loops.scrit",
    "strop.agents.loops.self_correct",
    "strop.agents.loops.mcts",
    "strop.agents.loops.selfplay",
    "strop.agents.loops.sneaky",
    "strop.agents.loops.prm_labels",
    "strop.agents.loops.game_demos",
    "strop.agents.loops.agent",
)


class UnknownLoopError(UnknownNameError):
    """A loop name that no module registered; the message lists the known ones."""


@dataclass
class LoopResources:
    """What a stage or the CLI hands a loop: engines per role, the task set (and its label), the store.

    `engines` maps a role ('policy', 'critic', ...) to the engine that plays it; one engine may play several
    roles (self-critique). A loop asks only for the roles its spec declares.
    """

    engines: dict[str, Engine]
    task_set: TaskSet
    store: Any = None
    # the task set's label with its options (`evaluation.task_set_label`): what reflection memory is scoped by;
    # None: the task set's name
    label: str | None = None

    @property
    def policy(self) -> Engine:
        return self.engine(Role.POLICY)

    def engine(self, role: Role | str) -> Engine:
        try:
            return self.engines[str(role)]
        except KeyError:
            raise KeyError(
                f"no engine for role {role!r}; this loop needs one (give the role a model)"
            ) from None


@dataclass(frozen=True)
class LoopSpec:
    """A loop as the registry knows it."""

    name: str
    config: type[BaseModel]
    make: Callable[[LoopResources, Any], StateGraph]
    roles: tuple[Role, ...] = (Role.POLICY,)
    example_kinds: tuple[ExampleKind, ...] = ()
    description: str = ""
    # example kind -> the role whose training it feeds (default: the kind's usual role, policy)
    example_roles: dict[ExampleKind, Role] = field(default_factory=dict)
    # the roles a given config needs, when that depends on it (self-correction asks the critic role only for
    # critic feedback); None: always `roles`
    roles_for: Callable[[Any], tuple[Role, ...]] | None = None
    # a one-line summary of a collection run's episodes in the loop's own terms (e.g. the sneaky generator's
    # success rate), printed after a recipe stage collects and shown in the evolve table; None: nothing extra
    summarize: Callable[[Sequence[EpisodeRecord]], str] | None = None
    # The evaluator (strop.agents.evaluators) that measures a candidate this loop's examples trained, unless
    # a recipe stage names another (`[stages.eval] target`); `role_evaluators` overrides it per trained role
    # (a stage training the critic role is measured on the critic benchmark, whatever the loop).
    evaluator: str = "policy"
    role_evaluators: dict[Role, str] = field(default_factory=lambda: {Role.CRITIC: "critic"})

    def needed_roles(self, config: BaseModel | None = None) -> tuple[Role, ...]:
        """The roles this loop asks engines for under `config` (default: its default config)."""
        if self.roles_for is None:
            return self.roles
        return self.roles_for(config if config is not None else self.default_config())

    def evaluator_for(self, role: Role | str) -> str:
        """The name of the evaluator a stage training `role` with this loop uses by default."""
        return self.role_evaluators.get(str(role), self.evaluator)  # type: ignore[call-overload]  # StrEnum keys

    def default_config(self) -> BaseModel:
        return self.config()

    def parse_config(self, values: dict[str, Any] | None) -> BaseModel:
        """The loop's config from plain values (a recipe table, CLI `--set`); pydantic names bad fields."""
        return self.config.model_validate(values or {})

    def role_of(self, kind: ExampleKind) -> Role:
        return self.example_roles.get(kind, Role.POLICY)


LOOPS: Registry[LoopSpec] = Registry(
    "loop",
    LoopSpec,
    name_of=lambda spec: spec.name,
    normalize=underscores,
    builtin_modules=_BUILTIN_MODULES,
    entry_point_group=ENTRY_POINT_GROUP,
    list_command="strop loops list",
    error=UnknownLoopError,
)


def register_loop(spec: LoopSpec, *, replace: bool = False) -> LoopSpec:
    """Add a loop; a second loop under a taken name is refused (naming both origins) unless `replace`."""
    return LOOPS.register(spec.name, spec, replace=replace, stacklevel=2)


def get_loop(name: str) -> LoopSpec:
    """The spec of a loop by name ('best_of_n' or 'best-of-n')."""
    return LOOPS.get(name)


def list_loops() -> list[LoopSpec]:
    return LOOPS.list()
