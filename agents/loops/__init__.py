"""LangGraph loops. Each module exports its state schema, its config and `build_graph(...) -> StateGraph`."""
