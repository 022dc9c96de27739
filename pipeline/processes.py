"""Child processes that do not outlive the pipeline: a death signal set in the child, and a
stop that asks first and kills after a grace period.

In: a child process (subprocess.Popen) or the moment just before a child runs its program
(`preexec_fn`). Out: the child gets a signal when the process that started it dies (Linux); a
running child is stopped with SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
from collections.abc import Callable

# Looked up here, not in a forked child, where loading a library could meet a lock that another
# thread of the parent held at the fork.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
PR_SET_PDEATHSIG = 1
STOP_SECONDS = 5.0  # how long a child gets to stop after SIGTERM before SIGKILL


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """In the child (as `preexec_fn`, or first thing in a forked worker): receive `signum` when
    the thread that started this process dies, so a killed pipeline run leaves no orphan
    trainer, server or worker behind."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signum)


def stop_process(proc: subprocess.Popen, log: Callable[[str], None], what: str = "process") -> None:
    """SIGTERM, then SIGKILL after STOP_SECONDS (a trainer's checkpoints are written atomically,
    so a kill costs at most the steps since the last one)."""
    if proc.poll() is not None:
        return
    log(f"stopping the {what} {proc.pid}")
    proc.terminate()
    try:
        proc.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
