"""Search over reasoning steps: the tree and how to search it (`tree`), what a searched tree teaches
(`signals`). The loops that drive search with a policy and a scorer live in `strop.agents.loops`."""

from strop.agents.search.signals import StepPair, StepValue, sibling_pairs, value_targets, verified_traces
from strop.agents.search.tree import Node, Tree, priors_from_logprobs, score

__all__ = [
    "Node",
    "StepPair",
    "StepValue",
    "Tree",
    "priors_from_logprobs",
    "score",
    "sibling_pairs",
    "value_targets",
    "verified_traces",
]
