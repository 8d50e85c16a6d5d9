"""What a search tree teaches: step-level preference pairs (MCTS-DPO) and per-step value targets (ReST-MCTS*).

Both are pure functions of a finished tree, so they can be recomputed from a stored tree at any time (with
other thresholds) without searching again.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from strop.agents.search.tree import Node, Tree


class StepPair(BaseModel):
    """Two sibling steps under one partial solution: the higher-Q one is preferred (MCTS-DPO, arXiv 2405.00451)."""

    parent: int = Field(description="Node id of the shared partial solution.")
    prefix: list[str] = Field(description="The steps before the pair (the parent's partial solution).")
    chosen: int
    rejected: int
    chosen_step: str
    rejected_step: str
    q_gap: float = Field(description="Q(chosen) - Q(rejected).")


def sibling_pairs(
    tree: Tree, *, min_gap: float = 0.3, min_visits: int = 1, max_per_parent: int = 1
) -> list[StepPair]:
    """Pairs of siblings whose Q differ by at least `min_gap`, each visited at least `min_visits` times.

    Per parent, the best-Q child is paired with the worst ones first (the clearest preference), at most
    `max_per_parent` pairs; identical step texts never pair.
    """
    out: list[StepPair] = []
    for parent in tree.nodes:
        kids = [tree.nodes[i] for i in parent.children if tree.nodes[i].visits >= min_visits]
        if len(kids) < 2:
            continue
        kids.sort(key=lambda n: (-n.q, n.id))
        best = kids[0]
        made = 0
        for worse in reversed(kids[1:]):
            if made >= max_per_parent:
                break
            if best.q - worse.q < min_gap or best.step.strip() == worse.step.strip():
                continue
            out.append(
                StepPair(
                    parent=parent.id,
                    prefix=tree.steps(parent.id),
                    chosen=best.id,
                    rejected=worse.id,
                    chosen_step=best.step,
                    rejected_step=worse.step,
                    q_gap=best.q - worse.q,
                )
            )
            made += 1
    return out


class StepValue(BaseModel):
    """A partial solution and how likely it is to lead to the right answer (ReST-MCTS*, arXiv 2406.03816)."""

    node: int
    steps: list[str]
    value: float = Field(
        ge=0.0, le=1.0, description="Mean verified reward of the rollouts through this node."
    )
    visits: int


def value_targets(tree: Tree, *, min_visits: int = 1) -> list[StepValue]:
    """Every non-root node visited at least `min_visits` times with its Q as the value target.

    With verified rollouts as the evaluation (rewards in [0, 1]), Q is the share of rollouts through the
    node that reached the reference answer: ReST-MCTS*'s estimate of the step's value.
    """
    return [
        StepValue(node=n.id, steps=tree.steps(n.id), value=min(max(n.q, 0.0), 1.0), visits=n.visits)
        for n in tree.nodes[1:]
        if n.visits >= min_visits
    ]


def verified_traces(tree: Tree) -> list[Node]:
    """Terminal nodes whose verified reward is positive (the best traces, for policy SFT), best Q first."""
    return sorted((n for n in tree.nodes if n.terminal and (n.reward or 0.0) > 0), key=lambda n: (-n.q, n.id))
