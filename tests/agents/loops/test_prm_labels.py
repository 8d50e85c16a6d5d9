"""The prm_labels loop: reference, corruption and MATH-Shepherd step labels in the step scorer's own prompt.

Control flow with a scripted policy; one test through the real path (the tiny model, a real SQLite store, the
evolve cycle's SFT of the critic role and its PRM gate), then the trained critic scores steps."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from strop.agents.engines.base import Completion, FinishReason, GenerationRequest, as_requests
from strop.agents.loops import prm_labels
from strop.agents.loops.prm_record import step_prefixes
from strop.agents.loops.registry import LoopResources, get_loop
from strop.agents.runner import Runner
from strop.critics.scorer import StepScorer
from strop.memory import Store
from strop.memory.records import ExampleKind, Role, RunRecord
from strop.sandbox.tasks import ArithmeticTaskSet, Split
from strop.sandbox.tasks.base import Task

REPO = Path(__file__).resolve().parents[3]
TS = ArithmeticTaskSet(digits=1, steps=2)


class ShepherdEngine:
    """A policy for two-step problems: its solution gets step 1 right and step 2 wrong; continuations after
    step 1 reach the right answer on even samples, after step 2 never."""

    model_version = "shepherd"

    def __init__(self) -> None:
        self.requests: list[GenerationRequest] = []

    async def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        out = []
        for r in as_requests(requests):
            self.requests.append(r)
            assert r.messages is not None
            a, b, c = (int(x) for x in re.findall(r"\d+", r.messages[-2 if r.continue_final else -1].content))
            if not r.continue_final:
                texts = [
                    f"Step 1: {a} + {b} = {a + b}\nStep 2: {a + b} + {c} = {a + b + c + 1}\n#### {a + b + c + 1}"
                ]
            elif r.messages[-1].content.count("\n") == 1:  # after step 1
                texts = [
                    f"Step 2: {a + b} + {c} = {a + b + c + (i % 2)}\n#### {a + b + c + (i % 2)}"
                    for i in range(4)
                ]
            else:
                texts = [f"#### {a + b + c + 1}" for _ in range(4)]
            out.append(
                [
                    Completion(
                        text=t,
                        prompt_token_ids=[1, 2],
                        token_ids=[3] * len(t.split()),
                        logprobs=[-0.1] * len(t.split()),
                        finish_reason=FinishReason.STOP,
                        model_version=self.model_version,
                    )
                    for t in texts[: r.sampling.n]
                ]
            )
        return out

    async def close(self) -> None:
        return None


_DBS = iter(range(10**6))


async def _run(
    cfg: prm_labels.PRMLabelsConfig, tasks: list[Task], engine: object | None = None, *, where: Path
) -> Store:
    store = Store(f"sqlite:///{where / f'prm-{next(_DBS)}.db'}")
    engines = {"policy": engine} if engine is not None else {}
    graph = prm_labels.SPEC.make(LoopResources(engines=engines, task_set=TS, store=store), cfg)  # type: ignore[arg-type]
    await Runner(store, concurrency=4, progress=False).run(graph, tasks, RunRecord(id="r", loop="prm_labels"))
    return store


def _labels(store: Store) -> list[tuple[list[str], str, str]]:
    out = []
    for e in store.list_examples(role=Role.CRITIC, kind=ExampleKind.SFT):
        user = e.payload["prompt"][-1]["content"]
        out.append(
            (
                re.findall(r"Step \d+: (.*)", user),
                e.payload["completion"][0]["content"],
                e.payload["metadata"]["source"],
            )
        )
    return out


def test_the_spec_trains_the_critic_and_is_measured_as_a_prm() -> None:
    spec = get_loop("prm-labels")
    assert spec.evaluator == "critic" and spec.evaluator_for(Role.CRITIC) == "critic"
    assert spec.role_of(ExampleKind.SFT) == Role.CRITIC
    assert spec.needed_roles() == () and spec.needed_roles(prm_labels.PRMLabelsConfig(solutions=2)) == (
        Role.POLICY,
    )
    assert spec.default_config().critic_kind == "prm"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="unknown corruption kind"):
        prm_labels.PRMLabelsConfig(kinds=["typo"])


async def test_references_are_yes_and_their_corruptions_no_in_the_scorers_prompt_without_a_model(
    tmp_path: Path,
) -> None:
    tasks = TS.tasks(Split.TRAIN, 6)
    store = await _run(prm_labels.PRMLabelsConfig(), [*tasks, *TS.tasks(Split.HELDOUT, 3)], where=tmp_path)
    examples = store.list_examples(role=Role.CRITIC, kind=ExampleKind.SFT)
    assert examples and all(e.task_id in {t.id for t in tasks} for e in examples)  # never a held-out label
    by_task = {t.id: t for t in tasks}
    for e in examples:
        lines = re.findall(r"Step \d+: (.*)", e.payload["prompt"][-1]["content"])
        # The exact chat the step scorer asks at test time, so training and scoring read the same prompt.
        assert e.payload["prompt"] == StepScorer(None).messages(by_task[e.task_id], lines)
        ref = by_task[e.task_id].reference_steps
        answer = e.payload["completion"][0]["content"]
        assert answer == ("Yes" if lines == ref[: len(lines)] else "No")
    labels = _labels(store)
    assert sum(a == "Yes" for _, a, _ in labels) == sum(
        a == "No" for _, a, _ in labels
    )  # balanced per problem
    assert {s.split(":")[0] for _, _, s in labels} == {"reference", "corrupt"}
    assert store.list_episodes("r")[0].outcome["n"] == 0  # no policy asked


async def test_every_kind_and_every_reference_prefix_when_asked(tmp_path: Path) -> None:
    cfg = prm_labels.PRMLabelsConfig(corruptions_per_task=None, balance=False)
    labels = _labels(await _run(cfg, TS.tasks(Split.TRAIN, 20), where=tmp_path))
    assert {s for _, _, s in labels} == {
        "reference",
        "corrupt:calculation",
        "corrupt:operand",
        "corrupt:copy",
        "corrupt:drop",
    }
    assert sum(s == "reference" for _, _, s in labels) == 40  # both prefixes of each two-step reference
    none = _labels(
        await _run(
            prm_labels.PRMLabelsConfig(kinds=[], reference=False), TS.tasks(Split.TRAIN, 2), where=tmp_path
        )
    )
    assert none == []


async def test_math_shepherd_values_from_continuations_hard_and_soft(tmp_path: Path) -> None:
    task = TS.tasks(Split.TRAIN, 1)[0]
    engine = ShepherdEngine()
    hard = prm_labels.PRMLabelsConfig(reference=False, kinds=[], solutions=1, rollouts=4)
    labels = _labels(await _run(hard, [task], engine, where=tmp_path))
    # Step 1: 2 of 4 continuations reach the answer (any: Yes); step 2 is the solution's last, valued by its
    # own (wrong) answer: No.
    assert sorted((len(s), a) for s, a, _ in labels) == [(1, "Yes"), (2, "No")]
    [rollout_req] = [r for r in engine.requests if r.continue_final]
    assert rollout_req.sampling.n == 4 and rollout_req.messages[-1].content.endswith("\n")  # type: ignore[index]
    soft = hard.model_copy(update={"label": "soft", "soft_copies": 4})
    labels = _labels(await _run(soft, [task], ShepherdEngine(), where=tmp_path))
    assert (
        sorted((len(s), a) for s, a, _ in labels)
        == [(1, "No"), (1, "No"), (1, "Yes"), (1, "Yes")] + [(2, "No")] * 4
    )
    strict = hard.model_copy(update={"yes_at": 0.75})
    assert sorted(
        (len(s), a) for s, a, _ in _labels(await _run(strict, [task], ShepherdEngine(), where=tmp_path))
    ) == [
        (1, "No"),
        (2, "No"),
    ]


async def test_unsolved_problems_give_no_rollout_labels_and_episodes_store_the_rollouts(
    tmp_path: Path,
) -> None:
    class Hopeless(ShepherdEngine):
        async def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
            out = await super().generate(requests)
            for cs in out:
                for c in cs:
                    c.text = re.sub(r"#### \d+", "#### -1", c.text)
            return out

    task = TS.tasks(Split.TRAIN, 1)[0]
    cfg = prm_labels.PRMLabelsConfig(reference=False, kinds=[], solutions=1, rollouts=2)
    store = await _run(cfg, [task], Hopeless(), where=tmp_path)
    assert _labels(store) == []
    [ep] = store.list_episodes("r")
    assert [s.role for s in ep.steps] == ["solution", "rollout", "rollout"]
    assert ep.outcome["correct"] == 0 and ep.outcome["examples"] == 0
    kept = _labels(
        await _run(cfg.model_copy(update={"only_solved": False}), [task], Hopeless(), where=tmp_path)
    )
    assert sorted((len(s), a) for s, a, _ in kept) == [(1, "No"), (2, "No")]


def test_step_prefixes_match_what_the_scorer_splits() -> None:
    text = "Step 1: 2 + 3 = 5\n\nStep 2: 5 * 2 = 10\n#### 10\nStep 3: ignored"
    assert step_prefixes(text) == [
        ("Step 1: 2 + 3 = 5\n", ["2 + 3 = 5"]),
        ("Step 1: 2 + 3 = 5\n\nStep 2: 5 * 2 = 10\n", ["2 + 3 = 5", "5 * 2 = 10"]),
    ]
    assert step_prefixes("") == [] and step_prefixes("#### 4") == []


def test_the_shipped_recipe_validates() -> None:
    from strop.training.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "prm-arithmetic.toml")
    trained = [s for s in recipe.stages if s.train is not None]
    assert [s.train.role for s in trained] == ["critic"]  # type: ignore[union-attr]
    assert all(s.loop in ("prm_labels", "mcts") for s in recipe.stages)


def _tiny_recipe(tmp_path: Path) -> Path:
    text = f'''name = "tiny-prm"
cycles = 1
output_dir = "{tmp_path / "run"}"

[roles]
policy = "tiny"
critic = "tiny"

[[stages]]
name = "shepherd"
loop = "prm_labels"
concurrency = 4
tasks = {{ name = "arithmetic", options = {{ steps = 2 }}, train_per_cycle = 3, heldout = 4 }}
config = {{ reference = false, kinds = [], solutions = 1, rollouts = 2, max_tokens = 16, rollout_max_tokens = 8, only_solved = false, system_prompt = "" }}

[[stages]]
name = "prm"
loop = "prm_labels"
concurrency = 4
tasks = {{ name = "arithmetic", options = {{ steps = 2 }}, train_per_cycle = 6, heldout = 4 }}

[stages.train]
kind = "sft"
role = "critic"
sources = ["self", "shepherd"]
settings = {{ epochs = 1, batch_size = 4, learning_rate = 1e-3, max_length = 256, lora = {{ r = 4, alpha = 8 }} }}

[stages.eval]
target = "critic"
margin = 0.0
policy_accuracy = false
'''
    p = tmp_path / "prm.toml"
    p.write_text(text)
    return p


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_the_tiny_model_labels_trains_the_critic_and_the_trained_critic_scores_steps(
    sqlite_url: str, tmp_path: Path, tiny_model_path: Path
) -> None:
    from strop.agents.runner import load_version_engine
    from strop.memory.records import ModelStatus
    from strop.training.evolve import Evolution
    from strop.training.recipe import load_recipe

    store = Store(sqlite_url)
    evo = Evolution(load_recipe(_tiny_recipe(tmp_path)), store, progress=False)
    await evo.run()
    assert evo.metric(1) == "arithmetic[steps=2]/prm/f1"  # the loop's labels are measured as a PRM
    shepherd = store.list_episodes(evo.collect_run_id(1, 0))
    assert len(shepherd) == 3 and all(ep.steps and ep.steps[0].role == "solution" for ep in shepherd)
    assert all(s.token_ids and s.model_version for ep in shepherd for s in ep.steps)
    # Every critic example of both stages was consumed by the one SFT job.
    assert store.count_examples(Role.CRITIC, ExampleKind.SFT) > 0
    assert store.count_examples(Role.CRITIC, ExampleKind.SFT, unconsumed_by="critic:sft") == 0
    cand = store.get_model(evo.candidate_id(1, 1))
    assert cand is not None and cand.status in (ModelStatus.PROMOTED, ModelStatus.REJECTED)
    assert "arithmetic[steps=2]/prm/n_tasks" in cand.metrics
    engine = load_version_engine(cand)
    try:
        task = ArithmeticTaskSet(steps=2).tasks(Split.HELDOUT, 1)[0]
        scores = await StepScorer(engine).score_steps(task, "\n".join(task.reference_steps))
    finally:
        await engine.close()
    assert len(scores) == 2 and all(p is None or 0.0 <= p <= 1.0 for p in scores)
    store.close()
