"""A search tree over reasoning steps, and how to search it (UCT / PUCT selection, backpropagation).

Split as llm-reasoners splits search: this module is *how to search* and holds no model; *what the world
is* (a partial solution, the next steps a policy proposes) and *how to score* (a rollout checked by the
verifier, a step scorer) belong to the loop that drives it. Each node is one step appended to its parent's
partial solution; the root is the bare problem.

The tree is plain data that round-trips through JSON (`to_json` / `from_json`), so a loop keeps it in its
LangGraph state and a killed search resumes with every visit count intact, and the store keeps it whole.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, Field

Selection = Literal["uct", "puct"]


class Node(BaseModel):
    """One step of a partial solution, with its search statistics."""

    id: int = Field(description="Index in the tree's node list; the root is 0.")
    parent: int | None = Field(None, description="Parent node id; None for the root.")
    step: str = Field("", description="The step this edge adds (empty at the root).")
    token_ids: list[int] = Field(default_factory=list, description="The step's tokens, as sampled.")
    logprobs: list[float] = Field(default_factory=list, description="Sampling log-prob of each token.")
    prior: float = Field(1.0, ge=0.0, description="P(step | parent) for PUCT, normalised over siblings.")
    children: list[int] = Field(default_factory=list)
    visits: int = Field(0, ge=0)
    value_sum: float = Field(0.0, description="Sum of the values backed up through this node.")
    value: float | None = Field(
        None, description="The node's own evaluation (rollout, scorer), when it has one."
    )
    terminal: bool = Field(False, description="The step ends the solution (a final answer).")
    reward: float | None = Field(None, description="Verifier reward of a terminal node.")
    depth: int = 0

    @property
    def q(self) -> float:
        """Mean backed-up value; 0 before the first visit."""
        return self.value_sum / self.visits if self.visits else 0.0

    @property
    def expanded(self) -> bool:
        return bool(self.children)


class Tree(BaseModel):
    """Nodes by id; node 0 is the root (the problem, no step yet)."""

    nodes: list[Node] = Field(default_factory=lambda: [Node(id=0)])

    @property
    def root(self) -> Node:
        return self.nodes[0]

    def add_child(
        self,
        parent: int,
        step: str,
        *,
        token_ids: list[int] | None = None,
        logprobs: list[float] | None = None,
        prior: float = 1.0,
        terminal: bool = False,
    ) -> Node:
        node = Node(
            id=len(self.nodes),
            parent=parent,
            step=step,
            token_ids=token_ids or [],
            logprobs=logprobs or [],
            prior=prior,
            terminal=terminal,
            depth=self.nodes[parent].depth + 1,
        )
        self.nodes.append(node)
        self.nodes[parent].children.append(node.id)
        return node

    def path(self, node_id: int) -> list[Node]:
        """Root to `node_id`, inclusive."""
        out = []
        cur: int | None = node_id
        while cur is not None:
            out.append(self.nodes[cur])
            cur = self.nodes[cur].parent
        return out[::-1]

    def steps(self, node_id: int) -> list[str]:
        """The partial solution at `node_id`: its steps, root excluded."""
        return [n.step for n in self.path(node_id)[1:]]

    def leaves(self) -> list[Node]:
        return [n for n in self.nodes if not n.children]

    # ------------------------------------------------------------------------------------------ search
    def select(self, *, c: float = 1.4, rule: Selection = "uct") -> Node:
        """Walk from the root by the selection rule to a node that is unexpanded or terminal."""
        node = self.root
        while node.children and not node.terminal:
            node = max((self.nodes[i] for i in node.children), key=lambda ch: score(ch, node, c=c, rule=rule))
        return node

    def backpropagate(self, node_id: int, value: float) -> None:
        """Add one visit with `value` to `node_id` and every ancestor."""
        for n in self.path(node_id):
            n.visits += 1
            n.value_sum += value

    def best_leaf(self, *, by: Literal["q", "reward", "visits"] = "q") -> Node | None:
        """The final answer's node: the terminal node with the highest Q (test time), verified reward
        (training time) or visit count; ties go to the earlier node. None when no terminal node exists."""
        terminals = [n for n in self.nodes if n.terminal]
        if not terminals:
            return None
        if by == "reward":
            return max(terminals, key=lambda n: (n.reward if n.reward is not None else -math.inf, n.q))
        if by == "visits":
            return max(terminals, key=lambda n: (n.visits, n.q))
        return max(terminals, key=lambda n: (n.q if n.visits else (n.value or 0.0), n.visits))

    def greedy_path(self) -> list[Node]:
        """From the root, the most visited child at each level (the search's chosen path)."""
        node = self.root
        out = [node]
        while node.children:
            node = max((self.nodes[i] for i in node.children), key=lambda ch: (ch.visits, ch.q))
            out.append(node)
        return out

    # ------------------------------------------------------------------------------------------- state
    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tree:
        return cls.model_validate(data)


def score(child: Node, parent: Node, *, c: float, rule: Selection) -> float:
    """Selection score of `child` under `parent`.

    UCT:  Q + c * sqrt(ln N_parent / (1 + N))            (an unvisited child scores +inf: try each once)
    PUCT: Q + c * P * sqrt(N_parent) / (1 + N)           (AlphaZero's form; P from the policy's log-probs)
    """
    if rule == "uct":
        if child.visits == 0:
            return math.inf
        return child.q + c * math.sqrt(math.log(max(parent.visits, 1)) / (1 + child.visits))
    return child.q + c * child.prior * math.sqrt(max(parent.visits, 1)) / (1 + child.visits)


def priors_from_logprobs(logprobs: list[list[float]], *, temperature: float = 1.0) -> list[float]:
    """PUCT priors for sibling steps: softmax over each step's mean token log-prob (length-normalised, so a
    long step is not penalised for its length), at `temperature`."""
    if not logprobs:
        return []
    means = [sum(lp) / len(lp) if lp else 0.0 for lp in logprobs]
    top = max(means)
    weights = [math.exp((m - top) / max(temperature, 1e-6)) for m in means]
    total = sum(weights)
    return [w / total for w in weights]
