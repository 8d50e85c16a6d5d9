"""MCTS over reasoning steps (ReST-MCTS*, arXiv 2406.03816; MCTS-DPO, arXiv 2405.00451) as a LangGraph loop.

A tree per task (`strop.agents.search.Tree`): the root is the problem, each edge one reasoning step (a step
ends at a newline, `step_stop`). One graph node is one search iteration:
select (UCT or PUCT, priors from the policy's own log-probs) -> expand (k candidate next steps in one batched
request, continued from the parent's exact token ids) -> evaluate each child (training time: a rollout to the
end checked by the verifier; test time: the step scorer's P(correct); or their mean) -> backpropagate.
The budget is counted in generated tokens (expansions and rollouts together), so search and best-of-N are
compared at equal cost. Each iteration is checkpointed, so a killed search resumes with its tree intact.

The whole tree is stored (one step per node: parent, text, token ids, visits, Q, value, terminal reward).
What it teaches (`strop.agents.search.signals`): sibling steps with a clear Q gap become step-level DPO pairs
(MCTS-DPO; chosen and rejected share the partial solution before them, which cancels in DPO's log-ratios);
the verified traces become SFT examples (ReST-MCTS*). The episode record, its examples and the tree rebuilt
from stored steps are in `mcts_record`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, ConfigDict, Field

from strop.agents.engines.base import Engine, FinishReason, GenerationRequest, SamplingParams
from strop.agents.loops.base import stable_id, task_messages
from strop.agents.loops.mcts_record import episode_of
from strop.agents.loops.registry import LoopResources, LoopSpec, register_loop
from strop.agents.loops.scrit import STEP_SYSTEM_PROMPT
from strop.agents.search.tree import Selection, Tree, priors_from_logprobs
from strop.critics.scorer import StepScorer
from strop.critics.verifier import VerifierCritic
from strop.memory.records import ExampleKind, Role
from strop.sandbox.tasks.base import Split, Task

LOOP_NAME = "mcts"


class MCTSConfig(BaseModel):
    """One tree search per task: its budget, how it selects, expands and evaluates, and what it emits."""

    model_config = ConfigDict(extra="forbid")

    budget_tokens: int = Field(
        1024,
        ge=1,
        description="Generated tokens (expansions and rollouts) per task; the "
        "search stops at the first iteration that reaches it.",
    )
    max_iterations: int = Field(64, ge=1, description="Most select-expand-evaluate iterations per task.")
    k: int = Field(3, ge=1, le=32, description="Candidate next steps sampled per expansion.")
    selection: Selection = Field(
        "uct", description="uct, or puct with priors from the steps' mean log-probs."
    )
    c: float = Field(1.4, ge=0.0, description="Exploration constant.")
    temperature: float = Field(
        0.8, ge=0.0, le=10.0, description="Sampling temperature of steps and rollouts."
    )
    step_stop: list[str] = Field(default_factory=lambda: ["\n"], description="Strings that end a step.")
    max_step_tokens: int = Field(32, ge=1, le=4096, description="Most tokens per step.")
    max_depth: int = Field(6, ge=1, le=64, description="Steps after which a node is terminal.")
    answer_marker: str = Field("####", description="A step containing it gives the final answer (terminal).")
    evaluation: Literal["rollout", "scorer", "mix"] = Field(
        "rollout",
        description="How a new node is valued: a rollout to the end checked by the verifier (training "
        "time), the step scorer's P(correct) (test time, no ground truth; needs the critic role), or their mean.",
    )
    rollout_max_tokens: int = Field(96, ge=1, le=4096, description="Most tokens per rollout.")
    finish: bool = Field(
        False,
        description="Test time: keep rollout_max_tokens of the budget in reserve while no node is terminal, "
        "and if the search ends without one, complete its best partial solution with one greedy rollout (a "
        "terminal node), so a search cut short by its budget still answers, within the budget.",
    )
    system_prompt: str | None = Field(
        STEP_SYSTEM_PROMPT, description="System message (asks for one step a line)."
    )
    emit_pairs: bool = Field(True, description="Emit step-level DPO pairs (MCTS-DPO) from train-split trees.")
    min_q_gap: float = Field(0.3, ge=0.0, description="Smallest Q gap between paired siblings.")
    min_visits: int = Field(1, ge=1, description="Fewest visits each paired sibling needs.")
    max_pairs_per_task: int = Field(4, ge=0, description="Most pairs per tree.")
    emit_traces: bool = Field(False, description="Also emit the best verified trace as a policy SFT example.")
    emit_values: bool = Field(
        False,
        description="ReST-MCTS*: emit the tree's step values as critic-role SFT examples for the step "
        "scorer (its Yes/No prompt, answered Yes when the node's Q is at least value_yes, No when at most value_no).",
    )
    value_yes: float = Field(0.7, ge=0.0, le=1.0, description="Q at or above which a step is labelled Yes.")
    value_no: float = Field(0.2, ge=0.0, le=1.0, description="Q at or below which a step is labelled No.")
    value_min_visits: int = Field(2, ge=1, description="Fewest visits for a node's Q to become a label.")
    value_only_solved: bool = Field(
        True,
        description="Label steps only in trees where some rollout or answer reached the correct result: in a "
        "tree that never did, every step's Q is 0 whether the step was right or not, and a PRM trained on those "
        "labels learns to answer No. (value_yes = 0.01 with value_no = 0 is MATH-Shepherd's hard estimation: a step "
        "is good when any rollout through it succeeds.)",
    )
    seed: int | None = Field(None, description="Sampling seed; each task and iteration get their own stream.")

    def sampling(
        self, *stream: object, n: int = 1, max_tokens: int, stop: list[str] | None = None
    ) -> SamplingParams:
        seed = None if self.seed is None else int(stable_id(self.seed, *stream)[:12], 16)
        return SamplingParams(
            n=n,
            temperature=self.temperature,
            max_tokens=max_tokens,
            stop=stop or [],
            seed=seed,
            logprobs=True,
        )


class MCTSState(TypedDict, total=False):
    task: dict[str, Any]
    run_id: str
    episode_id: str
    tree: dict[str, Any]  # Tree as JSON; node token ids are each step's own
    root_ids: list[int]  # the prompt's token ids (the root's context)
    tokens: int  # generated so far
    iteration: int
    episode: dict[str, Any]


def build_graph(
    policy: Engine,
    verifier: VerifierCritic,
    config: MCTSConfig | None = None,
    scorer: StepScorer | None = None,
) -> StateGraph:
    """The uncompiled graph. `scorer` values nodes when `evaluation` is 'scorer' or 'mix'."""
    cfg = config or MCTSConfig()
    if cfg.evaluation != "rollout" and scorer is None:
        raise ValueError(
            f"evaluation = {cfg.evaluation!r} needs a step scorer: pass scorer=StepScorer(engine) "
            "(a recipe gives it the critic role's model)"
        )

    def context(tree: Tree, root_ids: list[int], node_id: int) -> list[int]:
        """The exact ids a node's partial solution was generated from: prompt, then each step's tokens."""
        return [*root_ids, *(t for n in tree.path(node_id)[1:] for t in n.token_ids)]

    async def evaluate(
        task: Task, tree: Tree, root_ids: list[int], node_id: int, stream: object
    ) -> tuple[float, int]:
        """The node's value and the tokens it cost."""
        node = tree.nodes[node_id]
        solution = "".join(tree.steps(node_id))
        if node.terminal:
            # Stored with the tree either way; it is the node's value only where ground truth may be used.
            node.reward = (await verifier.critique(task, solution)).reward
            if cfg.evaluation != "scorer":
                return node.reward, 0
        values: list[float] = []
        spent = 0
        if cfg.evaluation in ("rollout", "mix") and not node.terminal:
            req = GenerationRequest(
                messages=[],
                context_token_ids=context(tree, root_ids, node_id),
                sampling=cfg.sampling(task.id, "rollout", stream, max_tokens=cfg.rollout_max_tokens),
            )
            [[c]] = await policy.generate([req])
            spent += len(c.token_ids)
            values.append((await verifier.critique(task, solution + c.text)).reward)
        if cfg.evaluation in ("scorer", "mix"):
            assert scorer is not None
            p = await scorer.score(task, [s.strip() for s in tree.steps(node_id) if s.strip()])
            values.append(p if p is not None else 0.0)
        return sum(values) / len(values), spent

    async def start(state: MCTSState) -> dict[str, Any]:
        # The prompt's ids come back with the first expansion, which is asked as a chat (the engine applies
        # its template); every later request continues from ids.
        return {"tree": Tree().to_json(), "root_ids": [], "tokens": 0, "iteration": 0}

    async def iterate(state: MCTSState) -> dict[str, Any]:
        task = Task.model_validate(state["task"])
        tree = Tree.from_json(state["tree"])
        it = state["iteration"]
        root_ids = list(state["root_ids"])
        leaf = tree.select(c=cfg.c, rule=cfg.selection)
        spent = 0
        if leaf.terminal:  # the best path is already finished: re-value it
            value, _ = await evaluate(task, tree, root_ids, leaf.id, it)
            tree.backpropagate(leaf.id, value)
        else:
            sampling = cfg.sampling(
                task.id, "expand", it, n=cfg.k, max_tokens=cfg.max_step_tokens, stop=cfg.step_stop
            )
            if root_ids:
                req = GenerationRequest(
                    messages=[], context_token_ids=context(tree, root_ids, leaf.id), sampling=sampling
                )
            else:  # the root's first expansion
                req = GenerationRequest(messages=task_messages(task, cfg.system_prompt), sampling=sampling)
            [completions] = await policy.generate([req])
            if not root_ids and completions:
                root_ids = list(completions[0].prompt_token_ids)
                if not root_ids:
                    raise ValueError(
                        "the MCTS loop continues partial solutions from token ids, but this engine "
                        "reports none (an HTTP server without return_token_ids); use hf or vllm"
                    )
            priors = priors_from_logprobs([c.logprobs or [] for c in completions])
            children = []
            seen = {tree.nodes[i].step.strip() for i in leaf.children}
            for c, prior in zip(completions, priors, strict=True):
                spent += len(c.token_ids)
                if not c.token_ids or c.text.strip() in seen:
                    continue  # a duplicate sibling would split one step's visits between two nodes
                seen.add(c.text.strip())
                # Ended by EOS (not by a step stop, not cut at max_step_tokens): the model finished its solution.
                ended = c.finish_reason == FinishReason.STOP and c.matched_stop is None
                terminal = cfg.answer_marker in c.text or leaf.depth + 1 >= cfg.max_depth or ended
                step = c.text + (c.matched_stop or "")  # the step's text matches its tokens
                children.append(
                    tree.add_child(
                        leaf.id,
                        step,
                        token_ids=c.token_ids,
                        logprobs=c.logprobs or [],
                        prior=prior,
                        terminal=terminal,
                    )
                )
            results = await asyncio.gather(
                *(evaluate(task, tree, root_ids, ch.id, (it, ch.id)) for ch in children)
            )
            for ch, (value, cost) in zip(children, results, strict=True):
                ch.value = value
                spent += cost
                tree.backpropagate(ch.id, value)
            if not children:  # nothing sampled: close the leaf so selection moves on
                leaf.terminal = True
                leaf.reward = 0.0
                tree.backpropagate(leaf.id, 0.0)
        return {
            "tree": tree.to_json(),
            "root_ids": root_ids,
            "tokens": state["tokens"] + spent,
            "iteration": it + 1,
        }

    def more(state: MCTSState) -> str:
        tree = Tree.from_json(state["tree"])
        unanswered = cfg.finish and not any(n.terminal for n in tree.nodes)
        reserve = cfg.rollout_max_tokens if unanswered else 0
        done = state["tokens"] >= cfg.budget_tokens - reserve or state["iteration"] >= cfg.max_iterations
        closed = tree.root.expanded and all(n.terminal for n in tree.leaves())
        if done or closed:
            return "finish" if unanswered else "record"
        return "iterate"

    async def finish(state: MCTSState) -> dict[str, Any]:
        """Complete the best unfinished leaf with one greedy rollout: it becomes the tree's only terminal node."""
        task = Task.model_validate(state["task"])
        tree = Tree.from_json(state["tree"])
        root_ids = list(state["root_ids"])
        leaves = [n for n in tree.leaves() if n.parent is not None] or [tree.root]
        leaf = max(leaves, key=lambda n: (n.q if n.visits else (n.value or 0.0), n.depth, -n.id))
        allowance = max(1, min(cfg.rollout_max_tokens, cfg.budget_tokens - state["tokens"]))
        greedy = SamplingParams(n=1, temperature=0.0, max_tokens=allowance, logprobs=True)
        if root_ids:
            req = GenerationRequest(
                messages=[], context_token_ids=context(tree, root_ids, leaf.id), sampling=greedy
            )
        else:  # nothing was expanded: answer the problem greedily
            req = GenerationRequest(messages=task_messages(task, cfg.system_prompt), sampling=greedy)
        [[c]] = await policy.generate([req])
        root_ids = root_ids or list(c.prompt_token_ids)
        node = tree.add_child(
            leaf.id, c.text, token_ids=c.token_ids, logprobs=c.logprobs or [], terminal=True
        )
        value, _ = await evaluate(task, tree, root_ids, node.id, "finish")
        node.value = value
        tree.backpropagate(node.id, value)
        return {"tree": tree.to_json(), "root_ids": root_ids, "tokens": state["tokens"] + len(c.token_ids)}

    async def record(state: MCTSState) -> dict[str, Any]:
        task = Task.model_validate(state["task"])
        tree = Tree.from_json(state["tree"])
        train = task.split == Split.TRAIN
        best = tree.best_leaf(by="reward" if train and cfg.evaluation == "rollout" else "q")
        answer = "".join(tree.steps(best.id)) if best is not None else ""
        verdict = await verifier.critique(task, answer)
        return {
            "episode": episode_of(
                state, cfg, tree, best.id if best else None, verdict.reward, verdict.correct, loop=LOOP_NAME
            ).model_dump(mode="json")
        }

    graph = StateGraph(MCTSState)
    graph.add_node("start", start)
    graph.add_node("iterate", iterate)
    graph.add_node("finish", finish)
    graph.add_node("record", record)
    graph.add_edge(START, "start")
    graph.add_edge("start", "iterate")
    graph.add_conditional_edges("iterate", more, ["iterate", "finish", "record"])
    graph.add_edge("finish", "record")
    graph.add_edge("record", END)
    return graph


def _make(resources: LoopResources, config: MCTSConfig) -> StateGraph:
    scorer = StepScorer(resources.engine(Role.CRITIC)) if config.evaluation != "rollout" else None
    return build_graph(resources.policy, VerifierCritic(resources.task_set), config, scorer)


def _roles(config: MCTSConfig) -> tuple[Role, ...]:
    return (Role.POLICY, Role.CRITIC) if config.evaluation != "rollout" else (Role.POLICY,)


SPEC = register_loop(
    LoopSpec(
        name=LOOP_NAME,
        config=MCTSConfig,
        make=_make,
        roles=(Role.POLICY,),
        roles_for=_roles,
        example_kinds=(ExampleKind.PAIR, ExampleKind.SFT),
        description="MCTS over reasoning steps: UCT/PUCT selection, k-way batched expansion from exact token ids, "
        "rollout (verifier) or step-scorer evaluation under a token budget; stores the whole tree and emits "
        "step-level DPO pairs (MCTS-DPO) and verified traces (ReST-MCTS*).",
    )
)
