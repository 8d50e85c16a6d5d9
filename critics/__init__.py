"""Who judges: verifiers, LLM critics, judges and value scoring. May import `sandbox` only."""

from critics.base import Critic, Critique, CritiqueVerdict
from critics.verifier import VerifierCritic

__all__ = ["Critic", "Critique", "CritiqueVerdict", "VerifierCritic"]
