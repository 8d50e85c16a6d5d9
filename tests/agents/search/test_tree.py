"""The search tree on hand-built trees: UCT and PUCT selection, backpropagation, the final answer, a JSON round
trip, and the MCTS-DPO pairs and ReST-MCTS* value targets a known tree yields."""

from __future__ import annotations

import math

import pytest

from strop.agents.search import Tree, priors_from_logprobs, sibling_pairs, value_targets, verified_traces
from strop.agents.search.tree import score


def known_tree() -> Tree:
    """root -> a (node 1: 2 visits, Q 1.0), b (2: 2 visits, Q 0.0), c (3: 1 visit, Q 0.5);
    a -> a1 (4: terminal, reward 1)."""
    t = Tree()
    a = t.add_child(0, "Step 1: 2 + 3 = 5", prior=0.5)
    b = t.add_child(0, "Step 1: 2 + 3 = 6", prior=0.3)
    c = t.add_child(0, "Step 1: 2 + 3 = 5.", prior=0.2)
    a1 = t.add_child(a.id, "#### 5", terminal=True)
    a1.reward = 1.0
    t.backpropagate(a1.id, 1.0)
    t.backpropagate(a.id, 1.0)
    t.backpropagate(b.id, 0.0)
    t.backpropagate(b.id, 0.0)
    t.backpropagate(c.id, 0.5)
    return t


def test_backpropagation_adds_a_visit_and_the_value_to_every_ancestor() -> None:
    t = known_tree()
    assert t.root.visits == 5 and t.root.value_sum == pytest.approx(2.5)
    a, b, c, a1 = t.nodes[1:]
    assert (a.visits, a.q, b.visits, b.q, c.visits, c.q, a1.visits) == (2, 1.0, 2, 0.0, 1, 0.5, 1)
    assert t.steps(a1.id) == ["Step 1: 2 + 3 = 5", "#### 5"] and a1.depth == 2


def test_uct_tries_every_child_once_then_trades_value_for_exploration() -> None:
    t = Tree()
    for s in ("x", "y"):
        t.add_child(0, s)
    t.backpropagate(1, 1.0)
    assert t.select().id == 2  # unvisited: +inf
    t.backpropagate(2, 0.0)
    root, x, _ = t.nodes
    assert score(x, root, c=1.4, rule="uct") == pytest.approx(1.0 + 1.4 * math.sqrt(math.log(2) / 2))
    assert t.select(c=1.4).id == 1  # higher Q, same visits
    assert t.select(c=0.0).id == 1


def test_puct_weights_exploration_by_the_prior() -> None:
    t = Tree()
    t.add_child(0, "likely", prior=0.9)
    t.add_child(0, "unlikely", prior=0.1)
    t.backpropagate(0, 0.0)  # the root has been visited; neither child has
    assert t.select(rule="puct").id == 1
    root, likely, _ = t.nodes
    assert score(likely, root, c=2.0, rule="puct") == pytest.approx(2.0 * 0.9 * 1.0 / 1)
    for _ in range(
        9
    ):  # the likely step keeps failing: its visits shrink its bonus until the other gets a turn
        assert t.select(rule="puct", c=2.0).id == 1
        t.backpropagate(1, 0.0)
    assert t.select(rule="puct", c=2.0).id == 2


def test_selection_stops_at_a_terminal_or_unexpanded_node() -> None:
    t = known_tree()
    assert t.select(c=0.0).id == 4  # a -> a1, which is terminal
    assert t.best_leaf(by="q").id == 4 and t.best_leaf(by="reward").id == 4
    assert [n.id for n in t.greedy_path()] == [0, 1, 4]
    assert Tree().best_leaf() is None


def test_a_tree_round_trips_through_json_intact() -> None:
    t = known_tree()
    back = Tree.from_json(t.to_json())
    assert back == t and back.nodes[1].q == 1.0 and back.select(c=0.0).id == 4


def test_sibling_pairs_from_a_known_tree() -> None:
    t = known_tree()
    pairs = sibling_pairs(t, min_gap=0.3, min_visits=1)
    assert [(p.parent, p.chosen, p.rejected) for p in pairs] == [
        (0, 1, 2)
    ]  # a over b (gap 1.0): clearest first
    assert pairs[0].prefix == [] and pairs[0].q_gap == pytest.approx(1.0)
    assert len(sibling_pairs(t, min_gap=0.3, max_per_parent=2)) == 2  # then a over c (gap 0.5)
    assert sibling_pairs(t, min_gap=0.3, min_visits=2)[0].rejected == 2  # c has one visit only
    assert sibling_pairs(t, min_gap=1.5) == []


def test_value_targets_and_verified_traces() -> None:
    t = known_tree()
    targets = {v.node: v.value for v in value_targets(t)}
    assert targets == {1: 1.0, 2: 0.0, 3: 0.5, 4: 1.0}
    assert value_targets(t, min_visits=2)[0].steps == ["Step 1: 2 + 3 = 5"]
    assert [n.id for n in verified_traces(t)] == [4]


def test_priors_are_a_softmax_of_mean_token_logprobs() -> None:
    p = priors_from_logprobs([[-0.1, -0.1], [-1.0], []])
    assert sum(p) == pytest.approx(1.0) and p[2] > p[0] > p[1]
    assert priors_from_logprobs([]) == []
