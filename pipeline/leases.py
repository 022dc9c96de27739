"""Leases on stage outputs: which process is writing one, and taking over from a gone owner.

In: the lease file's path (`StageOutput.lease`). Out: `lease(...)`, a context manager that holds
the file while a stage writes its output. The file names its owner beyond a PID (host, boot id,
PID namespace, PID and process start time) and is touched as a heartbeat; a lease whose owner is
gone (exited, its PID reused after a container restart, the machine rebooted, or no heartbeat
for LEASE_STALE_SECONDS) is taken over at once, with a log line saying why. A live owner's lease
is waited for (two runs that meet on one stage: the second waits, then reuses the output).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LEASE_POLL_SECONDS = 1.0


class LeaseHeld(RuntimeError):
    """Another live process is writing this stage output."""


# The owner of a lease touches it every LEASE_HEARTBEAT_SECONDS. A lease whose owner cannot be
# looked up as a process from here (another host, another PID namespace, an older lease format)
# is stale once its heartbeat is older than LEASE_STALE_SECONDS.
LEASE_HEARTBEAT_SECONDS = 5.0
LEASE_STALE_SECONDS = 60.0
LEASE_LOG_SECONDS = 300.0  # a waiting run repeats what it waits for this often


def _read_first_line(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline().strip()
    except OSError:
        return None


def _process_start(pid: int) -> int | None:
    """When a process started, in clock ticks since boot (Linux); None when unknown.

    A PID is reused after its process exits; a PID and its start time name one process."""
    stat = _read_first_line(f"/proc/{pid}/stat")
    if not stat:
        return None
    try:  # the fields after the command name, which may itself hold spaces and ")"
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def lease_owner() -> dict[str, Any]:
    """Who this process is, as written into the leases it holds."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "boot_id": _read_first_line("/proc/sys/kernel/random/boot_id"),
        "pid_namespace": _pid_namespace(),
        "process_start": _process_start(os.getpid()),
        "since": time.time(),
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_reason(owner: dict[str, Any] | None, heartbeat_age: float) -> str | None:
    """Why a lease's owner is gone (None: it may still be writing).

    On the same machine (host, boot and PID namespace) the owner is a process that can be looked
    up: gone when its PID is dead or now belongs to a process that started at another time. From
    elsewhere, only its heartbeat (the lease file's modification time) says it is alive.
    """
    if owner is None:
        return "unreadable lease file"
    pid = int(owner.get("pid", -1))
    here = lease_owner()
    same_machine = owner.get("host") == here["host"] and all(
        owner.get(key) in (None, here[key]) for key in ("boot_id", "pid_namespace")
    )
    if same_machine:
        if not _pid_alive(pid):
            return f"its process {pid} has exited"
        started = owner.get("process_start")
        if started is not None and _process_start(pid) not in (None, started):
            return f"PID {pid} now belongs to another process (the owner exited)"
        if started is not None:
            return None  # the very process that took it: alive
    if owner.get("boot_id") not in (None, here["boot_id"]) and owner.get("host") == here["host"]:
        return "the machine has restarted since it was taken"
    if heartbeat_age > LEASE_STALE_SECONDS:
        return f"no heartbeat for {heartbeat_age:.0f} s"
    return None


def describe_owner(owner: dict[str, Any] | None, heartbeat_age: float) -> str:
    if owner is None:
        return "an unreadable owner"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(owner.get("since", 0))))
    return (
        f"process {owner.get('pid')} on host {owner.get('host')} since {since} "
        f"(last heartbeat {heartbeat_age:.0f} s ago)"
    )


def _read_lease(path: Path) -> tuple[str, dict[str, Any] | None, float] | None:
    """(raw text, owner, heartbeat age in seconds), or None when there is no lease."""
    try:
        text = path.read_text(encoding="utf-8")
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        owner = json.loads(text)
    except ValueError:
        owner = None
    return text, owner if isinstance(owner, dict) else None, max(age, 0.0)


def _create_exclusive(path: Path, text: str) -> None:
    """Create `path` holding `text`, or raise FileExistsError: written aside, then hard-linked
    into place, so no reader ever sees a lease without its owner."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    try:
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive flock on a folder: lease files are only removed while holding it."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_if_unchanged(path: Path, text: str) -> bool:
    """Remove the lease only if it still holds `text`: two runs that both found it stale must
    not remove the lease one of them has just taken."""
    with _folder_lock(path.parent):
        try:
            if path.read_text(encoding="utf-8") != text:
                return False
        except FileNotFoundError:
            return False
        path.unlink()
        return True


class _Heartbeat:
    """Touches the lease file every LEASE_HEARTBEAT_SECONDS while its owner works."""

    def __init__(self, path: Path, text: str):
        self.path, self.text = path, text
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.stopped.wait(LEASE_HEARTBEAT_SECONDS):
            try:
                if self.path.read_text(encoding="utf-8") != self.text:
                    return  # no longer ours
                os.utime(self.path)
            except OSError:
                return

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=LEASE_HEARTBEAT_SECONDS)


def _quiet(message: str) -> None:
    pass


@contextmanager
def lease(
    path: Path, wait_seconds: float = 0.0, log: Callable[[str], None] = _quiet
) -> Iterator[None]:
    """Hold an exclusive lease file while the block runs; take over a gone owner's lease.

    The lease names its owner (`lease_owner()`) and is touched as a heartbeat while held. A live
    owner's lease raises `LeaseHeld`, or with `wait_seconds` is waited for (two pipeline runs
    that meet on one stage: the second waits, then finds the output complete); `log` says what
    is waited for, and which stale lease was taken over and why.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(lease_owner())
    deadline = time.time() + wait_seconds
    takeovers = 0
    last_said = 0.0
    while True:
        try:
            _create_exclusive(path, text)
            break
        except FileExistsError:
            pass
        held = _read_lease(path)
        if held is None:
            continue  # released meanwhile: try again
        held_text, owner, age = held
        reason = stale_reason(owner, age)
        if owner is None and age < LEASE_HEARTBEAT_SECONDS:
            reason = None  # maybe an older version's writer, still writing it
        if reason is not None:
            takeovers += 1
            if takeovers > 10:
                raise LeaseHeld(f"could not take the lease {path}")
            if _remove_if_unchanged(path, held_text):
                log(f"lease {path}: taking over from {describe_owner(owner, age)}: {reason}")
            continue
        who = describe_owner(owner, age)
        if time.time() >= deadline:
            raise LeaseHeld(f"{path} is held by {who}")
        if time.time() - last_said >= LEASE_LOG_SECONDS:
            left = deadline - time.time()
            log(f"waiting for the lease {path}: held by {who}; waiting up to {left / 3600:.1f} h")
            last_said = time.time()
        time.sleep(min(LEASE_POLL_SECONDS, max(deadline - time.time(), 0.01)))
    heartbeat = _Heartbeat(path, text)
    try:
        yield
    finally:
        heartbeat.stop()
        _remove_if_unchanged(path, text)
