"""Task sets with verifiable answers."""

from sandbox.tasks.arithmetic import ArithmeticTaskSet
from sandbox.tasks.base import Split, Task, TaskSet, Verdict

__all__ = ["ArithmeticTaskSet", "Split", "Task", "TaskSet", "Verdict"]
