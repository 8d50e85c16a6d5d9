"""Who judges: verifiers, LLM critics, judges and value scoring. May import `sandbox` only."""

from strop.critics.base import Critic, Critique, CritiqueVerdict
from strop.critics.verifier import VerifierCritic

__all__ = ["Critic", "Critique", "CritiqueVerdict", "VerifierCritic"]
