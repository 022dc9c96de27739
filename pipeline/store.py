"""A work dir on object storage (s3://, gs://, any fsspec URL), with a local cache.

In: the config's `workdir` (or `--workdir`): a local path, or a URL such as `s3://bucket/run`.
Out: `open_workdir(...)`, a `Workdir` whose `local` is the folder stages compute in and read
from, and whose `store` (an `OutputStore`, None for a local work dir) pushes complete stage
outputs to the URL and pulls them back into the cache.

On a cluster, workers share object storage, not a disk: each machine computes in its own cache
(`$LLMPIPE_CACHE_DIR/work/<hash of the URL>`, default `~/.cache/llmpipe`), the same folder in
every process of that machine, and the store is where outputs meet. The S3 endpoint and
credentials come from the usual environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...);
MLflow's artifacts go to `<workdir>/mlartifacts` on the same store (MLflow reads
`MLFLOW_S3_ENDPOINT_URL`).

Publication: object stores have no rename. An output is pushed file by file and its
`_manifest.json` last (as datatrove writes its completion marker last), so on the store, as on
disk, an output is complete exactly when its manifest is there. A crashed push leaves files
without a manifest: a partial output, which no reader takes for complete; the next push deletes
those leftovers and writes the output again. A pull downloads into a hidden folder beside the
output, manifest last, and renames it into place, so a crashed pull leaves nothing complete;
the processes of one machine pull an output one at a time (a lock file beside it).

The units of one stage that Dask spreads over several machines meet through the store too:
each pushes its part under `<output>/_parts/` with a marker last, and the stage's machine merges
the marked parts (pipeline/store_units.py); `push` deletes them with any other leftover.

The stage that computes an output holds its lease on the store (s3://, by conditional writes:
pipeline/store_lease.py), so two machines never push one output over each other. Not on the
store (yet): an incremental run's record (refused: `check_workdir`), and MLflow's own database
(use a tracking server).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.outputs import MANIFEST, StageOutput

CACHE_ENV = "LLMPIPE_CACHE_DIR"


def is_url(workdir: str | Path) -> bool:
    """True for an fsspec URL other than a local file (`s3://...`, `gs://...`)."""
    text = str(workdir)
    return "://" in text and not text.startswith("file://")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llmpipe").expanduser()


def _filesystem(url: str) -> tuple[Any, str]:
    """The fsspec file system of `url` and the path in it; ConfigError naming `workdir` when
    the URL's protocol has no installed implementation (s3:// needs s3fs)."""
    import fsspec

    from pipeline.config import ConfigError

    protocol = url.split("://", 1)[0]
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        extra = " (pip install 'llmpipe[s3]')" if protocol in ("s3", "s3a") else ""
        raise ConfigError(
            f"workdir: {url}: no file system for {protocol}://{extra}: {exc}"
        ) from None
    return fs, path.rstrip("/")


def check_workdir(workdir: str | Path, incremental: bool = False) -> None:
    """ConfigError naming `workdir` when it is a URL no installed file system serves, or a URL
    for an incremental run (its record of earlier increments is not on the store yet)."""
    if not is_url(workdir):
        return
    _filesystem(str(workdir))
    if incremental:
        from pipeline.config import ConfigError

        raise ConfigError(
            f"workdir: {workdir}: an incremental run (run.mode: incremental) keeps its record "
            "of earlier increments in the work dir, which is not kept on object storage yet; "
            "use a local (or shared file system) work dir"
        )


class OutputStore:
    """Complete stage outputs under a URL, mirrored into the local cache `local`."""

    def __init__(self, url: str, local: Path):
        self.url = url.rstrip("/")
        self.local = local
        self.fs, self.root = _filesystem(self.url)

    def _prefix(self, output: StageOutput) -> str:
        return f"{self.root}/{output.stage}/{output.fingerprint}"

    def _ours(self, output: StageOutput) -> bool:
        """An output of this work dir (an output the config names lives where it lives)."""
        return Path(output.workdir) == self.local

    def url_of(self, output: StageOutput) -> str:
        return f"{self.url}/{output.stage}/{output.fingerprint}"

    def complete(self, output: StageOutput) -> bool:
        """The store holds the output with its manifest (the marker written last)."""
        if not self._ours(output):
            return False
        self.fs.invalidate_cache()  # another machine may have pushed it since we last looked
        return self.fs.exists(f"{self._prefix(output)}/{MANIFEST}")

    def pull(self, output: StageOutput) -> bool:
        """Make the output complete in the local cache, from the store if need be; False when
        neither has it complete."""
        if output.complete():
            return True
        if not self.complete(output):
            return False
        output.path.parent.mkdir(parents=True, exist_ok=True)
        # One pull of an output at a time on this machine (the units of a stage on one worker
        # pull the same upstream output at once): the others wait, then find it complete.
        with _file_lock(output.path.parent / f".{output.fingerprint}.pull"):
            if output.complete():
                return True
            prefix = self._prefix(output)
            files = sorted(
                self.fs.find(prefix), key=lambda p: (p.endswith("/" + MANIFEST), p)
            )  # manifest last
            staging = output.path.parent / f".pull-{output.fingerprint}-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            for remote in files:
                target = staging / remote[len(prefix) + 1 :]
                target.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(remote, str(target))
            if output.path.exists():  # an incomplete folder: never published
                shutil.rmtree(output.path)
            os.replace(staging, output.path)
        return True

    def push(self, output: StageOutput) -> None:
        """Publish a complete local output to the store: its files, then its manifest."""
        if not self._ours(output) or self.complete(output):
            return
        if not output.complete():
            raise RuntimeError(f"{output.path} is not complete: nothing to push")
        prefix = self._prefix(output)
        if self.fs.exists(prefix):  # a crashed push's leftovers: files without a manifest
            self.fs.rm(prefix, recursive=True)
        files = sorted(p for p in output.path.rglob("*") if p.is_file() and p.name != MANIFEST)
        for path in files:
            self.fs.put_file(str(path), f"{prefix}/{path.relative_to(output.path).as_posix()}")
        self.fs.put_file(str(output.path / MANIFEST), f"{prefix}/{MANIFEST}")


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (made if need be), for the processes of this machine."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@dataclass(frozen=True)
class Workdir:
    """Where stages compute (`local`) and, for a URL, where their outputs are kept (`store`)."""

    url: str  # as given: a local path (resolved) or a URL
    local: Path
    store: OutputStore | None = None

    def complete(self, output: StageOutput) -> bool:
        return output.complete() or (self.store is not None and self.store.complete(output))

    @property
    def mlflow_artifacts(self) -> str | Path:
        return f"{self.url}/mlartifacts" if self.store else self.local / "mlartifacts"


def open_workdir(workdir: str | Path) -> Workdir:
    """The work dir `workdir` names: a local folder, or a URL with its local cache folder."""
    if not is_url(workdir):
        text = str(workdir).removeprefix("file://")
        return Workdir(str(Path(text).resolve()), Path(text).resolve())
    url = str(workdir).rstrip("/")
    local = cache_root() / "work" / hashlib.sha256(url.encode()).hexdigest()[:16]
    local.mkdir(parents=True, exist_ok=True)
    return Workdir(url, local, OutputStore(url, local))
