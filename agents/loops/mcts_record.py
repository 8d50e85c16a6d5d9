"""What an MCTS search leaves behind: the episode record of a finished tree (every node a step) with the
training examples it teaches, and the tree rebuilt from those stored steps.

Pure functions of the finished tree and the loop's state (JSON), kept apart from the search's graph so the
record is tested without engines and a record node run twice gives the same episode, ids included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from strop.agents.loops.base import stable_id, task_messages
from strop.agents.search.signals import sibling_pairs, value_targets, verified_traces
from strop.agents.search.tree import Node, Tree
from strop.critics.scorer import StepScorer
from strop.memory.records import CritiqueRecord, EpisodeRecord, ExampleKind, ExampleRecord, Role, StepRecord
from strop.sandbox.tasks.base import Split, Task

if TYPE_CHECKING:
    from strop.agents.loops.mcts import MCTSConfig, MCTSState


def episode_of(
    state: MCTSState,
    cfg: MCTSConfig,
    tree: Tree,
    best: int | None,
    reward: float,
    correct: bool,
    *,
    loop: str,
) -> EpisodeRecord:
    """The finished search: every node as a step (the answer's path marked), the verifier's critique of the
    answer, and on train-split trees the step pairs, step values and verified trace the config asks for."""
    task = Task.model_validate(state["task"])
    eid = state["episode_id"]
    ids = {n.id: stable_id(eid, "node", n.id) for n in tree.nodes}
    chosen = {n.id for n in tree.path(best)} if best is not None else set()
    steps = [
        StepRecord(
            id=ids[n.id],
            parent_id=ids[n.parent] if n.parent is not None else None,
            index=n.id,
            role="root" if n.parent is None else "assistant",
            text=n.step,
            token_ids=n.token_ids or None,
            prompt_token_ids=state["root_ids"] if n.parent is None else None,
            logprobs=n.logprobs or None,
            reward=n.reward,
            value=n.q,
            visits=n.visits,
            metadata={
                "node": n.id,
                "terminal": n.terminal,
                "prior": n.prior,
                "own_value": n.value,
                "depth": n.depth,
                "chosen": n.id in chosen,
            },
        )
        for n in tree.nodes
    ]
    critiques = [
        CritiqueRecord(
            id=stable_id(eid, "answer"),
            step_id=ids[best] if best is not None else None,
            critic_version="verifier",
            verdict="correct" if correct else "incorrect",
            text="".join(tree.steps(best)) if best is not None else "",
        )
    ]
    examples: list[ExampleRecord] = []
    if task.split == Split.TRAIN:
        messages = [m.model_dump() for m in task_messages(task, cfg.system_prompt)]
        if cfg.emit_pairs and cfg.max_pairs_per_task:
            for p in sibling_pairs(tree, min_gap=cfg.min_q_gap, min_visits=cfg.min_visits)[
                : cfg.max_pairs_per_task
            ]:
                prefix = "".join(p.prefix)
                examples.append(
                    ExampleRecord(
                        id=stable_id(eid, "step-pair", p.chosen, p.rejected),
                        kind=ExampleKind.PAIR,
                        role=Role.POLICY,
                        payload={
                            "prompt": messages,
                            "chosen": [
                                {"role": "assistant", "content": (prefix + p.chosen_step).rstrip("\n")}
                            ],
                            "rejected": [
                                {"role": "assistant", "content": (prefix + p.rejected_step).rstrip("\n")}
                            ],
                            "metadata": {"parent": p.parent, "q_gap": p.q_gap},
                        },
                        episode_id=eid,
                        task_id=task.id,
                        split=str(task.split),
                    )
                )
        if cfg.emit_values:
            examples += value_examples(cfg, task, eid, tree)
        if cfg.emit_traces and (traces := verified_traces(tree)):
            examples.append(
                ExampleRecord(
                    id=stable_id(eid, "trace", traces[0].id),
                    kind=ExampleKind.SFT,
                    role=Role.POLICY,
                    payload={
                        "prompt": messages,
                        "completion": [
                            {"role": "assistant", "content": "".join(tree.steps(traces[0].id)).strip()}
                        ],
                    },
                    episode_id=eid,
                    task_id=task.id,
                    split=str(task.split),
                )
            )
    return EpisodeRecord(
        id=eid,
        run_id=state["run_id"],
        task_id=task.id,
        loop=loop,
        reward=reward,
        outcome={
            "n": 1,
            "correct": int(correct),
            "pass": correct,
            "examples": len(examples),
            "tokens": state["tokens"],
            "iterations": state["iteration"],
            "nodes": len(tree.nodes),
            "terminals": sum(n.terminal for n in tree.nodes),
            "best": best,
        },
        steps=steps,
        critiques=critiques,
        examples=examples,
    )


def value_examples(cfg: MCTSConfig, task: Task, eid: str, tree: Tree) -> list[ExampleRecord]:
    """Step-scorer training examples from the tree's values: the PRM learns P(step leads to the answer)."""
    scorer = StepScorer(None)
    out: list[ExampleRecord] = []
    if cfg.value_only_solved and tree.root.visits and tree.root.q <= 0.0:
        return out  # nothing through this tree ever succeeded: its zeros say nothing about its steps
    for v in value_targets(tree, min_visits=cfg.value_min_visits):
        steps = [s.strip() for s in v.steps if s.strip()]
        label = "Yes" if v.value >= cfg.value_yes else "No" if v.value <= cfg.value_no else None
        if label is None or not steps:
            continue
        out.append(
            ExampleRecord(
                id=stable_id(eid, "step-value", v.node),
                kind=ExampleKind.SFT,
                role=Role.CRITIC,
                payload={
                    "prompt": scorer.messages(task, steps),
                    "completion": [{"role": "assistant", "content": label}],
                    "metadata": {"value": v.value, "visits": v.visits},
                },
                episode_id=eid,
                task_id=task.id,
                split=str(task.split),
            )
        )
    return out


def tree_from_steps(steps: list[StepRecord]) -> Tree:
    """The search tree back from an episode's stored steps (one per node, `metadata['node']` its id)."""
    by_id = {s.id: s for s in steps}
    tree = Tree(nodes=[])
    for s in sorted(steps, key=lambda s: s.metadata["node"]):
        parent = by_id[s.parent_id].metadata["node"] if s.parent_id else None
        tree.nodes.append(
            Node(
                id=s.metadata["node"],
                parent=parent,
                step=s.text,
                token_ids=s.token_ids or [],
                logprobs=s.logprobs or [],
                prior=s.metadata["prior"],
                visits=s.visits or 0,
                value_sum=(s.value or 0.0) * (s.visits or 0),
                value=s.metadata["own_value"],
                terminal=s.metadata["terminal"],
                reward=s.reward,
                depth=s.metadata["depth"],
            )
        )
    for n in tree.nodes:
        if n.parent is not None:
            tree.nodes[n.parent].children.append(n.id)
    return tree
