"""Leases on stage outputs: which process is writing one, and taking over from a gone owner.

In: the lease file's path (`StageOutput.lease`), or another place that keeps a lease the same
way (an object on the store: pipeline/store_lease.py). Out: `lease(...)`, a context manager that
holds it while a stage writes its output. The lease names its owner beyond a PID (host, boot id,
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
from typing import Any, Protocol

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


class LeasePlace(Protocol):
    """Where a lease is kept: a local file (`LeaseFile`) or an object on a store
    (pipeline/store_lease.py). Each call is atomic where it keeps the lease."""

    name: str  # for messages

    def create(self, text: str) -> bool: ...  # False when a lease is there
    def read(self) -> tuple[str, float] | None: ...  # (text, heartbeat age s), None: no lease
    def take_over(self, held: str, text: str) -> bool: ...  # replace the lease read; False: lost
    def beat(self, text: str) -> bool: ...  # a heartbeat; False once the lease is not ours
    def release(self, text: str) -> bool: ...  # remove it while it is still ours


class LeaseFile:
    """A lease kept in a local file: created by a hard link (exclusive), removed under a folder
    lock only while it still holds what was read, touched as a heartbeat."""

    def __init__(self, path: Path):
        self.path = path
        self.name = str(path)

    def create(self, text: str) -> bool:
        """Create the lease holding `text`; False when one is there. Written aside, then
        hard-linked into place, so no reader ever sees a lease without its owner."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def read(self) -> tuple[str, float] | None:
        """(its text, heartbeat age in seconds), or None when there is no lease."""
        try:
            text = self.path.read_text(encoding="utf-8")
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        return text, max(age, 0.0)

    def take_over(self, held: str, text: str) -> bool:
        """Replace the stale lease that holds `held` by ours; False when another run changed
        it first (two runs that both found it stale: one of them gets it)."""
        return self.release(held) and self.create(text)

    def beat(self, text: str) -> bool:
        """Touch the lease while it is still ours; False once it is not."""
        try:
            if self.path.read_text(encoding="utf-8") != text:
                return False
            os.utime(self.path)
            return True
        except OSError:
            return False

    def release(self, text: str) -> bool:
        """Remove the lease only if it still holds `text`."""
        with _folder_lock(self.path.parent):
            try:
                if self.path.read_text(encoding="utf-8") != text:
                    return False
            except FileNotFoundError:
                return False
            self.path.unlink()
            return True


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


class _Heartbeat:
    """Beats the lease every LEASE_HEARTBEAT_SECONDS while its owner works."""

    def __init__(self, place: LeasePlace, text: str):
        self.place, self.text = place, text
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.stopped.wait(LEASE_HEARTBEAT_SECONDS):
            if not self.place.beat(self.text):
                return  # no longer ours

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=LEASE_HEARTBEAT_SECONDS)


def _quiet(message: str) -> None:
    pass


def _owner_of(text: str) -> dict[str, Any] | None:
    try:
        owner = json.loads(text)
    except ValueError:
        return None
    return owner if isinstance(owner, dict) else None


@contextmanager
def lease(
    path: Path | LeasePlace, wait_seconds: float = 0.0, log: Callable[[str], None] = _quiet
) -> Iterator[None]:
    """Hold an exclusive lease while the block runs; take over a gone owner's lease.

    `path` is a lease file's path, or another `LeasePlace` (pipeline/store_lease.py keeps one on
    object storage). The lease names its owner
    (`lease_owner()`) and beats as a heartbeat while held. A live owner's lease raises
    `LeaseHeld`, or with `wait_seconds` is waited for (two pipeline runs that meet on one stage:
    the second waits, then finds the output complete); `log` says what is waited for, and which
    stale lease was taken over and why.
    """
    place = LeaseFile(path) if isinstance(path, Path) else path
    text = json.dumps(lease_owner())
    deadline = time.time() + wait_seconds
    takeovers = 0
    last_said = 0.0
    while not place.create(text):
        held = place.read()
        if held is None:
            continue  # released meanwhile: try again
        held_text, age = held
        owner = _owner_of(held_text)
        reason = stale_reason(owner, age)
        if owner is None and age < LEASE_HEARTBEAT_SECONDS:
            reason = None  # maybe an older version's writer, still writing it
        if reason is not None:
            takeovers += 1
            if takeovers > 10:
                raise LeaseHeld(f"could not take the lease {place.name}")
            if place.take_over(held_text, text):
                log(f"lease {place.name}: taking over from {describe_owner(owner, age)}: {reason}")
                break
            continue
        who = describe_owner(owner, age)
        if time.time() >= deadline:
            raise LeaseHeld(f"{place.name} is held by {who}")
        if time.time() - last_said >= LEASE_LOG_SECONDS:
            left = deadline - time.time()
            log(
                f"waiting for the lease {place.name}: held by {who}; waiting up to {left / 3600:.1f} h"
            )
            last_said = time.time()
        time.sleep(min(LEASE_POLL_SECONDS, max(deadline - time.time(), 0.01)))
    heartbeat = _Heartbeat(place, text)
    try:
        yield
    finally:
        heartbeat.stop()
        place.release(text)
