"""Stage output folders: fingerprints, manifests, atomic publication and leases.

In: a stage name, its code version, the config fields that change its output and the
fingerprints of its inputs. Out: `<workdir>/<stage>/<fingerprint>/`, holding the stage's files
and a `_manifest.json`. A folder with a manifest is complete; a stage writes into
`<workdir>/<stage>/.partial-<fingerprint>/` and renames it into place only when done, so a
crash never leaves something a later run could take for a finished output. While a stage runs,
`<workdir>/<stage>/.<fingerprint>.lease` names the process that owns it; a lease whose process
is dead is taken over.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "_manifest.json"
LEASE_POLL_SECONDS = 1.0


def fingerprint(stage: str, version: int, config: dict[str, Any], inputs: list[str]) -> str:
    """A short stable hash of what determines a stage's output."""
    payload = json.dumps(
        {"stage": stage, "version": version, "config": config, "inputs": inputs},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))


def is_complete(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


@dataclass(frozen=True)
class StageOutput:
    """Where one fingerprinted stage output lives."""

    workdir: Path
    stage: str
    fingerprint: str

    @property
    def path(self) -> Path:
        return self.workdir / self.stage / self.fingerprint

    @property
    def partial(self) -> Path:
        return self.workdir / self.stage / f".partial-{self.fingerprint}"

    @property
    def lease(self) -> Path:
        return self.workdir / self.stage / f".{self.fingerprint}.lease"

    def complete(self) -> bool:
        return is_complete(self.path)

    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.path)


class LeaseHeld(RuntimeError):
    """Another live process is writing this stage output."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lease_is_stale(lease: Path) -> bool:
    try:
        owner = json.loads(lease.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True  # unreadable or half-written: its writer died mid-write
    if owner.get("host") != socket.gethostname():
        # A process on another host: only its heartbeat can say it is alive.
        return time.time() - lease.stat().st_mtime > 3600
    return not _pid_alive(int(owner.get("pid", -1)))


@contextmanager
def lease(path: Path, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lease file while the block runs; take over a dead owner's lease.

    A live owner's lease raises `LeaseHeld`, or with `wait_seconds` is waited for (two pipeline
    runs that meet on one stage: the second waits, then finds the output complete).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
    deadline = time.time() + wait_seconds
    takeovers = 0
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _lease_is_stale(path):
                takeovers += 1
                if takeovers > 2:
                    raise LeaseHeld(f"could not take the lease {path}") from None
                path.unlink(missing_ok=True)
                continue
            if time.time() >= deadline:
                try:
                    holder = path.read_text()
                except OSError:
                    holder = "?"
                raise LeaseHeld(f"{path} is held by a running process: {holder}") from None
            time.sleep(min(LEASE_POLL_SECONDS, max(deadline - time.time(), 0.01)))
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(owner)
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


@contextmanager
def building(
    output: StageOutput, keep_partial: bool = False, wait_seconds: float = 0.0
) -> Iterator[Path]:
    """Yield the partial folder to write into; the caller publishes it with `publish`.

    `keep_partial=True` keeps what a killed earlier attempt left (training resumes from its
    checkpoints); otherwise the partial folder starts empty.
    """
    with lease(output.lease, wait_seconds):
        if output.partial.exists() and not keep_partial:
            shutil.rmtree(output.partial)
        output.partial.mkdir(parents=True, exist_ok=True)
        try:
            yield output.partial
        finally:
            # The caller found the output published by another run (while it waited for the
            # lease) and wrote nothing: leave no empty partial folder behind.
            if output.complete() and output.partial.exists():
                shutil.rmtree(output.partial, ignore_errors=True)


def publish(output: StageOutput, manifest: dict[str, Any]) -> Path:
    """Write the manifest into the partial folder, then rename it into place."""
    if output.path.exists():  # an older incomplete folder: it was never published
        shutil.rmtree(output.path)
    manifest = {"stage": output.stage, "fingerprint": output.fingerprint, **manifest}
    write_json_atomic(output.partial / MANIFEST, manifest)
    os.replace(output.partial, output.path)
    return output.path
