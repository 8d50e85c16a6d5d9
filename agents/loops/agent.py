"""The `agent` loop: a user's own agent function, run n times per task with every model call captured.

The config names an entry point, `module:function` (or `path/to/file.py:function`): an async function
`(task, client) -> answer`, where `client` is an `openai.AsyncOpenAI` whose base URL is the rollout's capture
episode (agent_run.py). So a LangGraph or plain-`openai` agent runs unchanged except for the client it is
given, and strop's runner, workers and Ray scale-out apply to it like to any other loop.

One episode record per task: the steps are every captured call of every rollout (exact prompt ids, sampled
ids and log-probs), the outcome counts correct answers, failed rollouts, tool calls and re-tokenization drift,
and the examples are the group's `pg` actions (each call with its rollout's reward minus the group's mean;
credit.py), plus SFT examples of successful rollouts with `emit_sft`. Rollouts that raised, hung or never
called the model are kept with their error and give no examples.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from strop.agents.capture.credit import group_examples
from strop.agents.capture.episodes import CapturedEpisode
from strop.agents.capture.rollouts import AgentFn, check_agent, shared_run
from strop.agents.capture.teacher import TeacherEngine
from strop.agents.engines.base import Engine
from strop.agents.loops.base import stable_id
from strop.agents.loops.registry import LoopResources, LoopSpec, register_loop
from strop.critics.base import Critic
from strop.critics.verifier import VerifierCritic
from strop.memory.records import EpisodeRecord, ExampleKind, ExampleRecord, Role, StepRecord
from strop.sandbox.tasks.base import Split, Task

LOOP_NAME = "agent"


class EntryError(ValueError):
    """An entry point that does not name an importable async function; the message names the entry."""


def load_entry(entry: str, *, kind: str = "agent") -> AgentFn:
    """The async function `entry` names ('module:function', 'module:Class.method', 'file.py:function'); a
    `kind="teacher"` entry may be sync or async (it computes a reply, it does not call the model)."""
    module_name, sep, attr = entry.strip().rpartition(":")
    if not sep or not module_name or not attr:
        raise EntryError(
            f"entry {entry!r}: give 'module:function' (e.g. my_agent:solve or agents/my_agent.py:solve), "
            "an async function (task, client) -> answer"
        )
    module = _module(entry, module_name)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise EntryError(f"entry {entry!r}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if kind == "teacher":
        if not callable(obj):
            raise EntryError(
                f"teacher {entry!r} is not callable: give a function (task, messages, tools) -> str"
            )
        return obj  # type: ignore[no-any-return]
    try:
        return check_agent(obj, f"entry {entry!r}")
    except TypeError as e:
        raise EntryError(str(e)) from None


def _module(entry: str, name: str) -> Any:
    if name.endswith(".py"):
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise EntryError(f"entry {entry!r}: no file {path}")
        key = f"strop_agent_{stable_id(str(path))[:12]}"
        if key in sys.modules:
            return sys.modules[key]
        spec = importlib.util.spec_from_file_location(key, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        # `strop` runs as a console script, whose sys.path lacks the working folder `python -m` would add
        cwd = os.getcwd()
        if e.name and name.startswith(e.name) and cwd not in sys.path:
            sys.path.insert(0, cwd)
            return _module(entry, name)
        raise EntryError(
            f"entry {entry!r}: cannot import {name!r} ({e}); run from the folder that holds it or add that "
            "folder to PYTHONPATH"
        ) from e


class AgentLoopConfig(BaseModel):
    """Which agent runs, how many times per task, and what its rollouts emit."""

    model_config = ConfigDict(extra="forbid")

    entry: str = Field(
        description="Your agent: 'module:function' (or 'path/to/file.py:function'), an async function "
        "(task, client) -> answer; `client` is an openai.AsyncOpenAI bound to the rollout's episode."
    )
    n: int = Field(4, ge=1, le=256, description="Rollouts per task (a group: advantages are relative to it).")
    concurrency: int = Field(
        64, ge=1, le=4096, description="Rollouts in flight at once, over all tasks (the engine batches them)."
    )
    timeout_s: float = Field(
        120.0, gt=0, description="A rollout still running after this many seconds fails ('timed out')."
    )
    seed: int | None = Field(
        None,
        description="Calls that send no seed sample reproducibly: rollout k's call j with S + k + j*n, S derived "
        "from the seed and the task as best_of_n derives it (so rollout k and best-of-N's sample k agree).",
    )
    emit_advantages: bool = Field(
        True, description="Emit each call of a rewarded rollout as a pg action (ADVANTAGE examples)."
    )
    emit_sft: bool = Field(
        False,
        description="Also emit each chat call of a rollout rewarded >= sft_min_reward as an SFT example.",
    )
    sft_min_reward: float = Field(
        1.0, description="Least reward of a rollout whose calls become SFT examples."
    )
    emit_pairs: bool = Field(
        False,
        description="Also emit DPO pairs: where rollouts of a task made a call with the same prompt ids (the "
        "first call, at least), the reply of a best-rewarded rollout is chosen over a worse one's.",
    )
    max_pairs_per_task: int = Field(4, ge=1, le=4096, description="Most DPO pairs per task.")
    teacher: str | None = Field(
        None,
        description="Demonstrations: 'module:function' (or 'file.py:function'), (task, messages, tools) -> the reply "
        "the policy should give. The agent then runs against a teacher that answers every call with it; calls of "
        "rollouts that earn sft_min_reward become SFT examples, prompted exactly as the agent prompts the "
        "policy (a warm start for a model that cannot call tools yet). Needs emit_sft.",
    )

    @model_validator(mode="after")
    def _teacher_needs_sft(self) -> AgentLoopConfig:
        if self.teacher is not None and not self.emit_sft:
            raise ValueError("a teacher's replies are demonstrations, not samples: set emit_sft = true")
        return self

    @field_validator("entry")
    @classmethod
    def _importable(cls, entry: str) -> str:
        load_entry(entry)  # fail at the config, naming the entry, not mid-run
        return entry

    @field_validator("teacher")
    @classmethod
    def _teacher_importable(cls, teacher: str | None) -> str | None:
        if teacher is not None:
            load_entry(teacher, kind="teacher")
        return teacher


class AgentState(TypedDict, total=False):
    """The loop's state. JSON values only, so any LangGraph checkpointer can persist it."""

    task: dict[str, Any]  # Task as JSON (input)
    run_id: str  # input
    episode_id: str  # input
    rollouts: list[dict[str, Any]]  # per rollout: status, reward, correct, error, answer, captured episode
    episode: dict[str, Any]  # EpisodeRecord as JSON (output)


def build_graph(engine: Engine, critic: Critic, config: AgentLoopConfig) -> StateGraph:
    """The uncompiled graph: `rollouts` (n runs of the agent, captured and rewarded by `critic`) -> `record`.

    All episodes in flight share one local capture server per engine and event loop (`shared_run`), which
    stops once none is running."""
    cfg = config
    agent = load_entry(cfg.entry)
    teacher = TeacherEngine(engine, load_entry(cfg.teacher, kind="teacher")) if cfg.teacher else None
    if teacher is not None:
        engine = teacher

    async def rollouts(state: AgentState) -> dict[str, Any]:
        task = Task.model_validate(state["task"])
        if teacher is not None:
            teacher.expect(task)
        async with shared_run(engine, concurrency=cfg.concurrency) as (run, slots):
            group = await run.rollout_task(
                agent,
                task,
                n=cfg.n,
                group=state["episode_id"],  # unique per (run, task): two runs of one task never share a group
                run_id=state["run_id"],
                slots=slots,
                timeout_s=cfg.timeout_s,
                reward=critic,
                seed=cfg.seed,
            )
        return {
            "rollouts": [
                {
                    **r.summary(),
                    "index": r.index,
                    "correct": r.correct,
                    "episode": r.captured.model_dump(mode="json") if r.captured is not None else None,
                }
                for r in group.rollouts
            ]
        }

    def record(state: AgentState) -> dict[str, Any]:
        return {"episode": agent_episode(state, cfg).model_dump(mode="json")}

    graph = StateGraph(AgentState)
    graph.add_node("rollouts", rollouts)
    graph.add_node("record", record)
    graph.add_edge(START, "rollouts")
    graph.add_edge("rollouts", "record")
    graph.add_edge("record", END)
    return graph


def agent_episode(state: AgentState, cfg: AgentLoopConfig) -> EpisodeRecord:
    """One record for the task: every call of every rollout as a step, the group's examples, the counts."""
    task = Task.model_validate(state["task"])
    eid = state["episode_id"]
    captured: list[CapturedEpisode] = []
    steps: list[StepRecord] = []
    for r in state["rollouts"]:
        if r["episode"] is None:
            continue
        # ids from (episode, rollout), not the capture's random id: a rerun addresses the same steps and examples
        ep = CapturedEpisode.model_validate(r["episode"])
        ep = ep.model_copy(update={"id": stable_id(eid, "rollout", r["index"])})
        captured.append(ep)
        for call in sorted(ep.calls, key=lambda c: c.index):
            for step in ep.steps_of(call):
                step.index = len(steps)
                step.reward = r["reward"]
                step.metadata.update(rollout=r["index"], capture_episode=r["episode"]["id"])
                steps.append(step)
    examples: list[ExampleRecord] = []
    if task.split == Split.TRAIN and (cfg.emit_advantages or cfg.emit_sft or cfg.emit_pairs):
        by_episode = group_examples(
            captured,
            split=str(task.split),
            sft=cfg.emit_sft,
            sft_min_reward=cfg.sft_min_reward,
            example_episode=eid,
            max_pairs=cfg.max_pairs_per_task if cfg.emit_pairs else 0,
        )
        examples = [
            ex
            for ep in captured
            for ex in by_episode.get(ep.id, [])
            if cfg.emit_advantages or ex.kind != ExampleKind.ADVANTAGE
        ]
    n = len(state["rollouts"])
    correct = sum(bool(r["correct"]) for r in state["rollouts"])
    drift = {"checked": 0, "extended": 0, "differed": 0}
    for ep in captured:
        for k, v in ep.drift().items():
            drift[k] += v
    outcome: dict[str, Any] = {
        "n": n,
        "correct": correct,
        "pass": correct > 0,
        "failed": sum(r["status"] != "finished" for r in state["rollouts"]),
        "examples": len(examples),
        "tokens": sum(len(s.token_ids or []) for s in steps),
        "rollouts": [
            {k: r[k] for k in ("status", "reward", "error", "calls", "answer")} for r in state["rollouts"]
        ],
        "valid_tool_calls": sum(ep.tool_call_counts()["tool_calls"] for ep in captured),
        "invalid_tool_calls": sum(ep.tool_call_counts()["invalid_tool_calls"] for ep in captured),
        "drift": drift,
    }
    return EpisodeRecord(
        id=eid,
        run_id=state["run_id"],
        task_id=task.id,
        loop=LOOP_NAME,
        reward=correct / n if n else 0.0,
        outcome=outcome,
        steps=steps,
        examples=examples,
    )


def summarize(episodes: Any) -> str:
    """Failed rollouts and the share of valid tool calls, for a collection's report line."""
    outcomes = [e.outcome for e in episodes]
    n = sum(int(o.get("n", 0)) for o in outcomes)
    failed = sum(int(o.get("failed", 0)) for o in outcomes)
    valid = sum(int(o.get("valid_tool_calls", 0)) for o in outcomes)
    invalid = sum(int(o.get("invalid_tool_calls", 0)) for o in outcomes)
    tools = f", {valid}/{valid + invalid} tool calls valid" if valid + invalid else ""
    return f"{failed}/{n} rollouts failed{tools}"


def _make(resources: LoopResources, config: AgentLoopConfig) -> StateGraph:
    return build_graph(resources.policy, VerifierCritic(resources.task_set), config)


SPEC = register_loop(
    LoopSpec(
        name=LOOP_NAME,
        config=AgentLoopConfig,
        make=_make,
        roles=(Role.POLICY,),
        example_kinds=(ExampleKind.ADVANTAGE, ExampleKind.SFT, ExampleKind.PAIR),
        description="Your own agent (entry = 'module:function', async (task, client) -> answer), run n times per "
        "task with every model call captured; each call becomes a pg action with its rollout's group-relative "
        "reward (and SFT examples from successful rollouts with emit_sft).",
        summarize=summarize,
        evaluator="agent",
    )
)

import strop.agents.evaluators.agent  # noqa: E402, F401  (registers the 'agent' evaluator this loop names)
