"""Every evaluation task type and the function that runs it.

In: nothing (a table). Out: `RUNNERS`, task type -> runner(task, EvalContext) -> TaskResult:
the language-model tasks of `pipeline.evaluate.tasks` and the application tasks (qa,
summarization, translation, classification) of `pipeline.evaluate.application`, which builds on
`tasks`; joined here so that neither of the two imports the other in a circle.
"""

from __future__ import annotations

from pipeline.evaluate.application import APPLICATION_RUNNERS
from pipeline.evaluate.tasks import BASE_RUNNERS

RUNNERS = {**BASE_RUNNERS, **APPLICATION_RUNNERS}
