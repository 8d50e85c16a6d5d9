"""Credit for captured episodes: each call of a rollout becomes a `pg` action with its group's advantage.

The simplest credit assignment that works for agents one did not write (Agent Lightning, ART): the episode's
reward, minus the mean reward of the episodes of the same task (its group), is the advantage of every call the
episode made. Only the sampled tokens of each call take loss; the prompt ids are the context exactly as the
engine tokenized it. A lone episode keeps its raw reward (plain REINFORCE), as the other loops do.

Failed and aborted episodes are not part of a group and give no examples: their error is stored, nothing is
trained. Greedy calls (temperature 0) give no `pg` action, since their log-probs are not those of a
distribution that was sampled from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from strop.agents.capture.episodes import CapturedCall, CapturedEpisode
from strop.agents.loops.base import stable_id
from strop.agents.loops.pairs import Answer, preference_pairs
from strop.memory.records import AdvantagePayload, EpisodeStatus, ExampleKind, ExampleRecord, Role


def group_advantages(rewards: Sequence[float]) -> list[float]:
    """Each reward minus the group's mean; a group of one keeps its reward."""
    if len(rewards) < 2:
        return [float(r) for r in rewards]
    mean = sum(rewards) / len(rewards)
    return [float(r) - mean for r in rewards]


def credited(episodes: Sequence[CapturedEpisode]) -> list[CapturedEpisode]:
    """The episodes of a group that take part in its credit: finished, with a reward."""
    return [e for e in episodes if e.status == EpisodeStatus.FINISHED and e.reward is not None]


def action_examples(
    episode: CapturedEpisode,
    advantage: float,
    *,
    task_id: str | None = None,
    split: str = "train",
    example_episode: str | None = None,
    skip_zero: bool = True,
) -> list[ExampleRecord]:
    """One ADVANTAGE example per sampled choice of each call of `episode`.

    `example_episode`: the episode id the examples are stored under (the agent loop stores one record per
    task and names the rollout in the metadata). `skip_zero`: an action with advantage 0 changes nothing.
    """
    if skip_zero and advantage == 0.0:
        return []
    out: list[ExampleRecord] = []
    for call in sorted(episode.calls, key=lambda c: c.index):
        if call.temperature <= 0:
            continue
        for j, ch in enumerate(call.choices):
            if not ch.token_ids or not ch.prompt_token_ids or ch.logprobs is None:
                continue
            payload = AdvantagePayload(
                prompt_ids=ch.prompt_token_ids,
                completion_ids=ch.token_ids,
                logprobs=ch.logprobs,
                advantage=advantage,
                temperature=call.temperature,
                model_version=ch.model_version,
                reward=episode.reward,
                prompt=call.messages if call.messages is not None else call.prompt,
                completion=ch.text,
                metadata={"episode": episode.id, "call": call.index, "choice": j, "group": episode.group},
            )
            ex = payload.example(task_id=task_id or episode.task_id, split=split)
            ex.id = stable_id(episode.id, "action", call.index, j)
            ex.episode_id = example_episode or episode.id
            out.append(ex)
    return out


def sft_examples(
    episode: CapturedEpisode,
    *,
    task_id: str | None = None,
    split: str = "train",
    example_episode: str | None = None,
) -> list[ExampleRecord]:
    """Each chat call of a successful episode as an SFT example: the messages as sent, the reply as generated.

    The reply is the generated text itself (tool calls in the format the engine rendered them), so training on
    it teaches what the model must produce, not a re-serialisation of it."""
    out: list[ExampleRecord] = []
    for call in sorted(episode.calls, key=lambda c: c.index):
        if call.messages is None or not call.choices:
            continue
        ch = call.choices[0]
        payload: dict[str, Any] = {
            "prompt": call.sft_prompt if call.sft_prompt is not None else _plain_messages(call),
            "completion": [{"role": "assistant", "content": call.prefill + ch.text}],
        }
        if call.sft_tools:
            payload["tools"] = call.sft_tools
        out.append(
            ExampleRecord(
                id=stable_id(episode.id, "sft", call.index),
                kind=ExampleKind.SFT,
                role=Role.POLICY,
                payload=payload,
                episode_id=example_episode or episode.id,
                task_id=task_id or episode.task_id,
                split=split,
            )
        )
    return out


def _plain_messages(call: CapturedCall) -> list[dict[str, Any]]:
    return [dict(m) for m in call.messages or []]


def group_examples(
    episodes: Sequence[CapturedEpisode],
    *,
    split: str = "train",
    sft: bool = False,
    sft_min_reward: float = 1.0,
    example_episode: str | None = None,
    max_pairs: int = 0,
) -> dict[str, list[ExampleRecord]]:
    """The examples of a closed group, by episode id: `pg` actions for every finished, rewarded episode, and,
    with `sft`, SFT examples for those whose reward reaches `sft_min_reward`; with `max_pairs`, DPO pairs (see
    `pair_examples`, kept under the chosen episode). Held-out tasks give none."""
    if split == "heldout":
        return {}
    members = credited(episodes)
    advantages = group_advantages([e.reward or 0.0 for e in members])
    out: dict[str, list[ExampleRecord]] = {}
    for ep, adv in zip(members, advantages, strict=True):
        examples = action_examples(ep, adv, split=split, example_episode=example_episode)
        if sft and (ep.reward or 0.0) >= sft_min_reward:
            examples += sft_examples(ep, split=split, example_episode=example_episode)
        if examples:
            out[ep.id] = examples
    if max_pairs > 0:
        for owner, pair in pair_examples(
            members, split=split, max_pairs=max_pairs, example_episode=example_episode
        ):
            out.setdefault(owner, []).append(pair)
    return out


def pair_examples(
    episodes: Sequence[CapturedEpisode],
    *,
    split: str = "train",
    max_pairs: int = 4,
    example_episode: str | None = None,
) -> list[tuple[str, ExampleRecord]]:
    """DPO pairs from calls the group's episodes made with the same prompt ids (an agent's first call, and any
    later one where the conversations had not diverged yet): the reply of a best-rewarded episode is chosen over
    that of a worse one. Each pair is returned with the id of its chosen episode (who owns it in the store)."""
    by_prompt: dict[tuple[int, ...], list[tuple[CapturedEpisode, CapturedCall]]] = {}
    for ep in episodes:
        for call in ep.calls:
            if call.messages is not None and call.choices:
                by_prompt.setdefault(tuple(call.choices[0].prompt_token_ids), []).append((ep, call))
    out: list[tuple[str, ExampleRecord]] = []
    for shared in by_prompt.values():
        rewards = [ep.reward or 0.0 for ep, _ in shared]
        if len(shared) < 2 or max(rewards) == min(rewards):
            continue
        best = max(rewards)
        answers = [
            Answer(index=i, text=call.prefill + call.choices[0].text, correct=r == best)
            for i, ((_, call), r) in enumerate(zip(shared, rewards, strict=True))
        ]
        first_ep, first_call = shared[0]
        key = stable_id(example_episode or first_ep.group, "pairs", first_call.choices[0].prompt_token_ids)
        prompt = first_call.sft_prompt if first_call.sft_prompt is not None else _plain_messages(first_call)
        for pair in preference_pairs(
            key, prompt, answers, task_id=first_ep.task_id, split=split, max_pairs=max_pairs
        ):
            chosen = next(ep for (ep, call), a in zip(shared, answers, strict=True) if a.correct)
            pair.episode_id = example_episode or chosen.id
            out.append((chosen.id, pair))
    return out
