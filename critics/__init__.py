"""Who judges: verifiers, LLM critics, judges and value scoring. May import `sandbox` only."""
