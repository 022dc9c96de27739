"""The temporary Prefect server of one `llmpipe run` (when no PREFECT_API_URL is set).

In: nothing but the environment. Out: Prefect's own temporary server (its `SubprocessASGIServer`,
the one every Prefect client of this process then uses), started in a session of its own and
bound to this process's life:
  - a signal sent to the run's process group (Ctrl-C in a terminal, `docker stop`, a
    Kubernetes or Prefect cancellation) reaches the run and its trainer, not the server, so the
    server is still there to record how the run ended (Crashed) before it goes;
  - it gets SIGTERM when this process dies, even by SIGKILL (Linux PR_SET_PDEATHSIG), so no
    server is left behind; on a normal exit Prefect stops it (atexit), after its log and event
    workers have sent what they hold.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import types
from typing import Any


class _DetachedPopen(subprocess.Popen):
    """Popen in a new session; from the main thread, also stopped when this process dies
    (the death signal follows the thread that started the child)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["start_new_session"] = True
        if sys.platform == "linux" and threading.current_thread() is threading.main_thread():
            from pipeline.processes import die_with_parent

            kwargs["preexec_fn"] = die_with_parent
        super().__init__(*args, **kwargs)


def start_local_server() -> str | None:
    """Start Prefect's temporary server detached (see the module docstring); its API URL, or
    None when a Prefect server is configured (PREFECT_API_URL) or the temporary one is off."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    import prefect.server.api.server as server_module

    server = server_module.SubprocessASGIServer()  # the instance Prefect's clients share
    if not server.running:
        # Only this module's use of `subprocess` changes: the server command is Prefect's.
        detached = types.ModuleType("subprocess")
        detached.__dict__.update(vars(subprocess))
        detached.Popen = _DetachedPopen  # type: ignore[attr-defined]
        real, server_module.subprocess = server_module.subprocess, detached
        try:
            server.start()
        finally:
            server_module.subprocess = real
    return server.api_url
