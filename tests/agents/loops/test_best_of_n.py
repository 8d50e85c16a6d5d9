import operator
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph

from strop.agents.loops import best_of_n
from strop.agents.loops.base import episode_input
from strop.critics import VerifierCritic
from strop.memory.records import EpisodeRecord
from strop.sandbox.tasks import ArithmeticTaskSet, Split
from tests.agents.loops.fakes import ScriptedEngine

TS = ArithmeticTaskSet()


async def _run(
    cfg: best_of_n.BestOfNConfig, split: Split = Split.TRAIN
) -> tuple[EpisodeRecord, ScriptedEngine]:
    engine = ScriptedEngine()
    task = TS.tasks(split, 1)[0]
    graph = best_of_n.build_graph(engine, VerifierCritic(TS), cfg).compile()
    out = await graph.ainvoke(episode_input(task, "run-1"))
    return EpisodeRecord.model_validate(out["episode"]), engine


async def test_episode_records_every_answer_and_emits_only_correct_ones() -> None:
    ep, engine = await _run(best_of_n.BestOfNConfig(n=4, system_prompt="Answer after ####."))
    assert len(engine.calls) == 1  # one request with n=4, so the engine can batch the samples
    assert [s.index for s in ep.steps] == [0, 1, 2, 3]
    assert [c.verdict for c in ep.critiques] == ["correct", "incorrect", "correct", "incorrect"]
    assert all(c.step_id == s.id for c, s in zip(ep.critiques, ep.steps, strict=True))
    assert ep.steps[0].token_ids and ep.steps[0].logprobs and ep.steps[0].model_version == "scripted"
    assert ep.outcome == {"n": 4, "correct": 2, "pass": True, "examples": 2, "tokens": 8, "first_correct": 0}
    assert ep.reward == 0.5
    assert len(ep.examples) == 2
    ex = ep.examples[0]
    assert ex.kind == "sft" and ex.split == "train" and ex.episode_id == ep.id
    assert ex.payload["prompt"] == [
        {"role": "system", "content": "Answer after ####."},
        {"role": "user", "content": TS.tasks(Split.TRAIN, 1)[0].prompt},
    ]
    assert ex.payload["completion"] == [{"role": "assistant", "content": ep.steps[0].text}]


async def test_ids_are_a_function_of_run_and_task_so_reruns_are_idempotent() -> None:
    a, _ = await _run(best_of_n.BestOfNConfig(n=2))
    b, _ = await _run(best_of_n.BestOfNConfig(n=2))
    assert a.id == b.id and [s.id for s in a.steps] == [s.id for s in b.steps]
    assert [e.id for e in a.examples] == [e.id for e in b.examples]


async def test_heldout_tasks_and_evaluation_emit_no_examples() -> None:
    held, _ = await _run(best_of_n.BestOfNConfig(n=2), split=Split.HELDOUT)
    assert held.outcome["correct"] == 1 and held.examples == []
    off, _ = await _run(best_of_n.BestOfNConfig(n=2, emit_examples=False))
    assert off.outcome["correct"] == 1 and off.examples == []


async def test_dedupe_keeps_one_example_per_distinct_answer() -> None:
    ep, _ = await _run(best_of_n.BestOfNConfig(n=6, dedupe_examples=True))
    assert ep.outcome["correct"] == 3 and len(ep.examples) == 1


class UserState(TypedDict, total=False):
    task: dict[str, Any]
    run_id: str
    episode_id: str
    episode: dict[str, Any]
    log: Annotated[list[str], operator.add]


async def test_best_of_n_runs_as_a_subgraph_inside_a_users_graph() -> None:
    engine = ScriptedEngine()
    sub = best_of_n.build_graph(engine, VerifierCritic(TS), best_of_n.BestOfNConfig(n=3)).compile()

    def before(state: UserState) -> dict[str, Any]:
        return {"log": ["before"]}

    def after(state: UserState) -> dict[str, Any]:
        return {"log": [f"after:{state['episode']['outcome']['correct']}"]}

    g = StateGraph(UserState)
    g.add_node("before", before)
    g.add_node("best_of_n", sub)
    g.add_node("after", after)
    g.add_edge(START, "before")
    g.add_edge("before", "best_of_n")
    g.add_edge("best_of_n", "after")
    g.add_edge("after", END)
    out = await g.compile().ainvoke({**episode_input(TS.tasks(Split.TRAIN, 1)[0], "r"), "log": []})
    assert out["log"] == ["before", "after:2"]
    assert len(out["episode"]["steps"]) == 3


def test_state_schema_is_exported() -> None:
    assert {"task", "samples", "critiques", "episode"} <= set(best_of_n.BestOfNState.__annotations__)


async def test_rationalization_hints_only_all_wrong_tasks_and_trains_the_unhinted_prompt() -> None:
    def answer(prompt: str, i: int) -> str:  # wrong without the hint; with it, right (and once citing it)
        if "Hint" not in prompt:
            return "#### 0"
        value = prompt.split("the answer is ")[1].rstrip(".)")
        return f"as the hint says, {value}" if i == 0 else f"so it is #### {value}"

    engine = ScriptedEngine(answer=answer)
    task = TS.tasks(Split.TRAIN, 1)[0]
    cfg = best_of_n.BestOfNConfig(n=3, rationalize=True)
    out = (
        await best_of_n.build_graph(engine, VerifierCritic(TS), cfg)
        .compile()
        .ainvoke(episode_input(task, "r"))
    )
    ep = EpisodeRecord.model_validate(out["episode"])
    assert len(engine.calls) == 2 and "Hint: the answer is" in engine.calls[1]
    assert ep.outcome["correct"] == 0 and ep.outcome["n"] == 3  # accuracy is the policy's own
    assert ep.outcome["rationalized"] == 3 and len(ep.steps) == 6
    assert [s.metadata["hinted"] for s in ep.steps] == [False] * 3 + [True] * 3
    assert len(ep.examples) == 2  # the one citing the hint is dropped
    assert ep.examples[0].payload["prompt"] == [
        {"role": "user", "content": task.prompt}
    ]  # no hint in training

    # A task with a correct answer, or an evaluation, is never hinted.
    engine2 = ScriptedEngine()
    await best_of_n.build_graph(engine2, VerifierCritic(TS), cfg).compile().ainvoke(episode_input(task, "r"))
    assert len(engine2.calls) == 1


def test_a_seed_gives_each_task_its_own_reproducible_stream() -> None:
    cfg = best_of_n.BestOfNConfig(seed=7)
    assert cfg.sampling("a").seed == cfg.sampling("a").seed != cfg.sampling("b").seed
    assert best_of_n.BestOfNConfig().sampling("a").seed is None
