"""A LangGraph ReAct agent with a calculator tool, written as anyone would, and trained by strop.

The agent is an ordinary LangGraph graph over LangChain's `ChatOpenAI`: a model node with the tool bound, a
`ToolNode`, and `tools_condition` between them. Nothing in it knows strop. To capture and train it, strop
only changes the base URL its `ChatOpenAI` talks to (`solve` reads it from the client strop hands over):

    strop run agent --set entry=examples/langgraph_react_agent.py:solve --model tiny --tasks arithmetic
    strop evolve --recipe recipes/agent-react.toml        # collect with the agent loop, train with pg

Run it by hand against any OpenAI-compatible server (a `strop serve` episode URL, vLLM, OpenAI itself):

    python examples/langgraph_react_agent.py --base-url http://127.0.0.1:8000/v1 "Ana has 12 apples..."
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import operator
import os
from typing import Any

from langchain_core.messages import SystemMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.errors import GraphRecursionError
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

SYSTEM = "Solve the problem. Use the calculator tool for the arithmetic, then give the final number."
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / and parentheses, e.g. '(12 + 34) * 2'."""

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise ValueError(f"not an arithmetic expression: {expression!r}")

    try:
        value = ev(ast.parse(expression, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError) as e:
        return f"error: {e}"
    return str(int(value)) if float(value).is_integer() else str(value)


def build_agent(llm: ChatOpenAI) -> Any:
    """The ReAct graph: the model answers or calls the calculator; tool results go back to the model."""
    model = llm.bind_tools([calculator])

    async def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke([SystemMessage(SYSTEM), *state["messages"]])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([calculator]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


async def ask(llm: ChatOpenAI, question: str, max_turns: int = 3) -> str:
    """Run the agent on one question; the last message is its answer (empty if it ran out of turns)."""
    try:
        out = await build_agent(llm).ainvoke(
            {"messages": [("user", question)]}, {"recursion_limit": 2 * max_turns}
        )
    except GraphRecursionError:
        return ""
    return str(out["messages"][-1].content)


async def solve(task: Any, client: Any) -> str:
    """strop's entry point: the task and an OpenAI client bound to one captured episode.

    The only strop-specific line: the base URL (and key) come from the client. The model name is whatever your code
    already says; under an episode any name is served by the policy."""
    llm = ChatOpenAI(
        base_url=str(client.base_url), api_key=client.api_key, model="gpt-4o-mini", max_tokens=64
    )
    return await ask(llm, task.prompt)


def teacher(task: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    """Demonstrations for the warm start: what the policy should answer at each turn of this agent, in the
    tool-call format `strop serve` parses (docs/serving.md#tool-calling)."""
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        return f"The answer is {last.get('content', '').strip()}."
    call = {"name": "calculator", "arguments": {"expression": task.metadata["expression"]}}
    return f"<tool_call>{json.dumps(call)}</tool_call>"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("question", help="A word problem.")
    parser.add_argument("--base-url", required=True, help="An OpenAI-compatible base URL ending in /v1.")
    parser.add_argument("--model", default="gpt-4o-mini", help="The model name your server expects.")
    args = parser.parse_args()
    key = os.environ.get("STROP_API_KEY", "strop")  # a `strop serve --api-key` server checks it
    llm = ChatOpenAI(base_url=args.base_url, api_key=key, model=args.model, max_tokens=64)
    print(asyncio.run(ask(llm, args.question)))


if __name__ == "__main__":
    main()
