"""Every evaluation task type and the function that runs it.

In: a task config. Out: its runner(task, EvalContext) -> TaskResult, found from the task's
config class (`runner_for`): the language-model tasks of `pipeline.evaluate.tasks` and the
application tasks (qa, summarization, translation, classification, and any `ApplicationTask`
that scores itself) of `pipeline.evaluate.application`, which builds on `tasks`; joined here so
that neither of the two imports the other in a circle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.evaluate.application import APPLICATION_RUNNERS
from pipeline.evaluate.tasks import BASE_RUNNERS

RUNNERS: dict[type, Callable[..., Any]] = {**BASE_RUNNERS, **APPLICATION_RUNNERS}


def runner_for(task: Any) -> Callable[..., Any]:
    """The runner registered for the task's class, or for the nearest class it derives from."""
    for cls in type(task).__mro__:
        if cls in RUNNERS:
            return RUNNERS[cls]
    raise TypeError(f"no evaluation runner for {type(task).__name__} tasks")
