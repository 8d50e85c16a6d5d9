"""strop as a library: its best-of-N loop as a subgraph of your own LangGraph graph, compiled with your own
checkpointer, and the episodes kept in a strop Store.

    python examples/embed_best_of_n.py [DB.sqlite] [--tasks 8] [--model tiny]
"""

import argparse
import asyncio
import operator
import os
import tempfile
from typing import Annotated, Any, TypedDict

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph

import strop


class MyState(TypedDict, total=False):
    # keys shared with the loop's own state (strop.BestOfNState) flow into the subgraph and back out
    task: dict[str, Any]
    run_id: str
    episode_id: str
    episode: dict[str, Any]
    log: Annotated[list[str], operator.add]  # your own keys sit beside them


def report(state: MyState) -> dict[str, Any]:  # a node of your own, after the loop
    outcome = state["episode"]["outcome"]
    return {"log": [f"{state['task']['prompt']} -> {outcome['correct']}/{outcome['n']} correct"]}


async def main(db: str, n_tasks: int, model: str) -> None:
    tasks, engine, spec = (
        strop.load_task_set("arithmetic"),
        strop.load_engine(model),
        strop.get_loop("best_of_n"),
    )
    config = spec.config(n=8, seed=0)  # a strop.BestOfNConfig
    # the one builder every loop has; strop.build_best_of_n(engine, critic, config) takes your own critic
    loop = spec.make(strop.LoopResources(engines={"policy": engine}, task_set=tasks), config)
    graph = StateGraph(MyState)
    graph.add_node("best_of_n", loop.compile())  # no checkpointer of its own: it uses the parent's
    graph.add_node("report", report)
    graph.add_edge(START, "best_of_n")
    graph.add_edge("best_of_n", "report")
    graph.add_edge("report", END)
    app = graph.compile(checkpointer=InMemorySaver())  # or AsyncSqliteSaver, AsyncPostgresSaver...

    store = strop.Store(db)
    run = store.create_run(strop.RunRecord(loop=spec.name, config=config.model_dump(), model_ids=[model]))
    inputs = [strop.episode_input(t, run.id) for t in tasks.tasks(strop.Split.TRAIN, n_tasks)]
    try:  # concurrent episodes: the engine batches their generate calls into one forward pass
        outs = await asyncio.gather(
            *(app.ainvoke(i, {"configurable": {"thread_id": i["episode_id"]}}) for i in inputs)
        )
    finally:
        await engine.close()
    for out in outs:
        store.write_episode(strop.EpisodeRecord.model_validate(out["episode"]))
        print(*out["log"])
    store.finish_run(run.id)
    print(f"run {run.id} in {db}: {store.counts()}")
    store.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("db", nargs="?", help="SQLite file for the store (default: a temporary one)")
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--model", default="tiny", help="a cache name (tiny, smollm2-135m) or a model folder")
    args = p.parse_args()
    asyncio.run(main(args.db or os.path.join(tempfile.mkdtemp(), "embed.db"), args.tasks, args.model))
