from strop.critics import Critic, CritiqueVerdict, VerifierCritic
from strop.sandbox.tasks import ArithmeticTaskSet, Split


async def test_verifier_critic_judges_with_the_task_sets_verifier() -> None:
    ts = ArithmeticTaskSet()
    task = ts.tasks(Split.TRAIN, 1)[0]
    critic = VerifierCritic(ts)
    assert isinstance(critic, Critic)
    right = await critic.critique(task, f"so the answer is\n#### {task.answer}")
    wrong = await critic.critique(task, f"#### {int(task.answer) + 1}")
    none = await critic.critique(task, "I do not know")
    assert right.verdict == CritiqueVerdict.CORRECT and right.correct and right.reward == 1.0
    assert right.extracted == task.answer and right.critic_version == "verifier"
    assert wrong.verdict == CritiqueVerdict.INCORRECT and not wrong.correct and wrong.reward == 0.0
    assert f"expected {task.answer}" in wrong.text
    assert none.verdict == CritiqueVerdict.INCORRECT and none.extracted is None and none.parsed


async def test_offloaded_verification_gives_the_same_verdict() -> None:
    ts = ArithmeticTaskSet()
    task = ts.tasks(Split.TRAIN, 1)[0]
    c = await VerifierCritic(ts, offload=True).critique(task, f"#### {task.answer}")
    assert c.correct
