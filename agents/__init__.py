"""Who acts (`strop.agents`): model engines, LangGraph loops and their registry, the episode runner, evaluation."""
