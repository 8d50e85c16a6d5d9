"""Who judges: verifiers, LLM critics, judges and value scoring. May import `memory` and `sandbox` only."""

from strop.critics.base import Critic, Critique, CritiqueVerdict
from strop.critics.llm import ContrastiveCritic, CriticSampling, StepwiseCritic, critique_all
from strop.critics.pairwise import PairwiseJudge, Preference
from strop.critics.registry import (
    CriticKind,
    UnknownCriticError,
    get_critic,
    list_critics,
    make_critic,
    register_critic,
)
from strop.critics.scorer import StepScorer
from strop.critics.verifier import VerifierCritic

__all__ = [
    "ContrastiveCritic",
    "Critic",
    "CriticKind",
    "CriticSampling",
    "Critique",
    "CritiqueVerdict",
    "PairwiseJudge",
    "Preference",
    "StepScorer",
    "StepwiseCritic",
    "UnknownCriticError",
    "VerifierCritic",
    "critique_all",
    "get_critic",
    "list_critics",
    "make_critic",
    "register_critic",
]
