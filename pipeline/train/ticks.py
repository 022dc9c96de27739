"""Progress ticks: how a trainer in a subprocess tells its orchestrator how far it is.

A trainer whose stdout is a pipe (the orchestrator runs it as `python -m pipeline.train`) cannot
draw a terminal progress bar itself. When the orchestrator sets `LLMPIPE_PROGRESS_TICKS=1` in
its environment, it prints compact `@progress STEP/TOTAL` lines instead (at most one a second,
pipeline.train.progress.ProgressTicks), and the orchestrator draws the bar with an ETA from them
(flows.ui.StageProgress) without logging them. Other stages that run long in the orchestrator's
process (evaluate: `@progress 2/5 tasks`) log the same ticks. Cheap to import: no torch.
"""

from __future__ import annotations

import os
import re

PROGRESS_TICKS_ENV = "LLMPIPE_PROGRESS_TICKS"
TICK_LINE = re.compile(r"^@progress (\d+)/(\d+)(?: ([a-z]+))?$")


def tick_line(done: int, total: int, unit: str = "steps") -> str:
    return f"@progress {done}/{total}" + ("" if unit == "steps" else f" {unit}")


def parse_tick(line: str) -> tuple[int, int, str] | None:
    """(done, total, unit) of a progress tick line, else None."""
    match = TICK_LINE.match(line.strip())
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), match.group(3) or "steps"


def ticks_requested() -> bool:
    return os.environ.get(PROGRESS_TICKS_ENV) == "1"
