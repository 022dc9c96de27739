"""Starting the training process: `python -m pipeline.train REQUEST.json` (or a launcher's
command around it) as a child process whose output streams into the stage's log.

In: the path of a written TrainRequest, a log function, the `train.launcher` template and the
environment to add (secrets travel there, never in the request file). Out: the process ran to
the end, or a RuntimeError with its last lines; when this process is stopped (SIGTERM, Ctrl-C)
or fails while training runs, the trainer is stopped first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.processes import die_with_parent, stop_process

Log = Callable[[str], None]


def launch_training(
    request_path: Path,
    log: Log,
    launcher: str | None = None,
    environment: dict[str, str] | None = None,
) -> None:
    """Run `python -m pipeline.train REQUEST` as its own process and stream its output.

    Training runs outside the orchestrator's process so that multi-device launchers, which
    re-execute the current command once per device, re-execute the trainer and not the flow.
    `launcher` (train.launcher) is a command template with {python} and {request}, e.g.
    "srun --ntasks-per-node=8 {python} -u -m pipeline.train {request}" or
    "torchrun --nproc-per-node=8 -m pipeline.train {request}" (pipeline.config.launcher_words
    says which are allowed). `environment` is added to the trainer's (secrets go there, never
    into the request file). When this process is interrupted (SIGTERM, Ctrl-C) or fails while
    training runs, the trainer is stopped before the error goes on.
    """
    from pipeline.config import launcher_words

    words = launcher_words(launcher or "{python} -u -m pipeline.train {request}")
    command = [
        word.replace("{python}", sys.executable).replace("{request}", str(request_path))
        for word in words
    ]
    log("launching: " + " ".join(command))
    env = {**os.environ, **(environment or {}), "PYTHONUNBUFFERED": "1"}
    tail: list[str] = []
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=die_with_parent if sys.platform == "linux" else None,
    ) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                line = line.rstrip()
                tail = (tail + [line])[-40:]
                log(line)
        except BaseException:
            stop_process(proc, log, "training process")
            raise
    if proc.returncode != 0:
        raise RuntimeError(
            f"training process exited with code {proc.returncode}; last lines:\n" + "\n".join(tail)
        )
