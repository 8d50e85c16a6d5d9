"""A plain `openai`-client agent with function calling, captured and trained by strop.

The agent is the loop the OpenAI docs show: send the conversation with `tools`, run the tool calls the model
makes, send the results back, stop when it answers. strop changes nothing in it but the client's base URL:

    strop run agent --set entry=examples/openai_agent.py:solve --model tiny --tasks arithmetic

Or capture it by hand with the Python API, rewarding each answer with the task's verifier:

    python examples/openai_agent.py --model tiny --tasks 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from openai import AsyncOpenAI

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"],
            },
        },
    }
]


def add(a: float, b: float) -> str:
    total = a + b
    return str(int(total)) if float(total).is_integer() else str(total)


async def agent(client: AsyncOpenAI, question: str, max_turns: int = 3) -> str:
    """Ask, run the tools the model calls, and return its final answer."""
    messages: list[Any] = [{"role": "user", "content": question}]
    for _ in range(max_turns):
        reply = await client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, tools=TOOLS, max_tokens=64
        )
        msg = reply.choices[0].message
        if not msg.tool_calls:
            return msg.content or ""
        messages.append(msg.model_dump(exclude_none=True))
        for call in msg.tool_calls:
            try:
                result = add(**json.loads(call.function.arguments))
            except (TypeError, ValueError) as e:
                result = f"error: {e}"
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    return ""


async def solve(task: Any, client: AsyncOpenAI) -> str:
    """strop's entry point: the task and a client bound to one captured episode."""
    return await agent(client, task.prompt)


async def main(model: str, n_tasks: int) -> None:
    import strop

    tasks = strop.load_task_set("arithmetic")
    verifier = strop.VerifierCritic(tasks)
    async with strop.AgentRun(strop.load_engine(model)) as run:
        for task in tasks.tasks("train", n_tasks):
            async with await run.episode(task) as episode:
                answer = await agent(episode.client(), task.prompt)
                critique = await episode.reward_with(verifier, answer)
                await episode.finish(answer=answer)
            print(f"{task.prompt} -> {answer!r} ({critique.verdict})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny", help="A cache name or a local model folder.")
    parser.add_argument("--tasks", type=int, default=4, help="How many arithmetic tasks to run.")
    args = parser.parse_args()
    asyncio.run(main(args.model, args.tasks))
