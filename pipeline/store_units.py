"""The units of one stage on machines that share only the object store (a work dir URL).

In: an executor whose units may run on other machines (`DaskExecutor`), the work dir's
`OutputStore`, and the output the stage is building. Out: `StoreUnits`, an executor with the
same `map` (same results, in unit order, and the same files in the stage's partial folder), for
which the machines need no shared file system.

A unit names the files it reads and writes by paths under the stage machine's cache (`origin`):
upstream outputs (`<origin>/<stage>/<fingerprint>/...`) and the stage's partial folder
(`<origin>/<stage>/.partial-<fingerprint>/...`). A unit that lands on a machine with another
cache (`run_unit`):

- pulls the upstream outputs it names from the store into its own cache (`OutputStore.pull`);
- pulls the stage's staged parts written so far (what earlier phases of the stage wrote: the
  files the stage machine wrote itself, and earlier units' parts) into `.staged-<fingerprint>`
  beside the partial folder, once per machine, and links them into a private folder of its own;
- runs with its paths rewritten to that folder (with the partial folder's folders, empty ones
  too), and pushes what it wrote there to the store under
  `<output on the store>/_parts/<attempt>-m<map>-u<unit>/`, the part's marker `_part.json`
  (the list of its files) last: a part without its marker (a unit that died pushing) is never
  merged, and a rerun of the unit deletes it and pushes the part again.

After each map the stage machine merges the remote units' parts, marker first read, into its
partial folder; before each map it pushes as a part of its own whatever it wrote there since
(and the parts of units that ran on its own machine, which wrote straight into the partial
folder). Publishing the output (`OutputStore.push`) deletes the staging prefix with any other
leftover. A unit on the stage machine's own cache runs as it is: nothing goes through the store.

Limits: a unit must write new files (a file it rewrites in place would write through the link
into the machine's staged copy); a file deleted between maps stays in the staged copies; a
worker machine pulls all the staged parts of a stage, not only those its unit reads, and keeps
them in its cache (`.staged-*`) until a unit there reads the published output (the last
stage's stay).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pipeline.outputs import StageOutput
from pipeline.parallel import Executor, _Closing
from pipeline.store import OutputStore, open_workdir

T = TypeVar("T")
PARTS = "_parts"
PART_MARKER = "_part.json"


def rewrite(value: Any, change: Callable[[str], str | None]) -> Any:
    """`value` with every path (str or Path) that `change` maps replaced, through dataclasses,
    tuples, lists and dicts (config models hold no work paths: left as they are)."""
    if isinstance(value, Path):
        changed = change(str(value))
        return value if changed is None else Path(changed)
    if isinstance(value, str):
        changed = change(value)
        return value if changed is None else changed
    if isinstance(value, (tuple, list)):
        items = [rewrite(item, change) for item in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return type(value)(items) if not hasattr(value, "_fields") else type(value)(*items)
    if isinstance(value, dict):
        return {key: rewrite(item, change) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {
            f.name: rewrite(getattr(value, f.name), change)
            for f in dataclasses.fields(value)
            if f.init
        }
        if all(fields[name] is getattr(value, name) for name in fields):
            return value
        return dataclasses.replace(value, **fields)
    return value


def _under(path: str, root: Path) -> Path | None:
    """`path` relative to `root` when it lies under it, else None."""
    prefix = str(root).rstrip("/") + "/"
    return Path(path[len(prefix) :]) if path.startswith(prefix) else None


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Each file under `folder` (relative path) -> (size, mtime in ns)."""
    if not folder.is_dir():
        return {}
    out = {}
    for path in folder.rglob("*"):
        try:
            stat = path.stat()
        except FileNotFoundError:  # replaced meanwhile (another unit of this machine)
            continue
        if path.is_file():
            out[path.relative_to(folder).as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return out


def _get(store: OutputStore, remote: str, target: Path, scratch: Path) -> None:
    """Download `remote` to `target` whole: into a temporary file in `scratch` (outside the
    folder that other units of this machine may be listing), then renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=scratch, prefix=".get-")
    os.close(handle)
    try:
        store.fs.get_file(remote, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _part_prefix(store: OutputStore, output: StageOutput, key: str) -> str:
    return f"{store._prefix(output)}/{PARTS}/{key}"


def push_part(store: OutputStore, output: StageOutput, key: str, folder: Path, files: list[str]):
    """Push `files` (relative to `folder`) as the part `key` of the output being built: a
    rerun's leftovers deleted first, the files, then the marker that lists them."""
    prefix = _part_prefix(store, output, key)
    store.fs.invalidate_cache()
    if store.fs.exists(prefix):
        store.fs.rm(prefix, recursive=True)
    for rel in files:
        store.fs.put_file(str(folder / rel), f"{prefix}/{rel}")
    store.fs.pipe_file(f"{prefix}/{PART_MARKER}", json.dumps({"files": files}).encode())


def pull_part(store: OutputStore, output: StageOutput, key: str, folder: Path) -> list[str]:
    """Download the complete part `key` into `folder`; its files (relative paths). A part
    whose marker is missing is an error: it was never finished."""
    prefix = _part_prefix(store, output, key)
    try:
        marker = json.loads(store.fs.cat_file(f"{prefix}/{PART_MARKER}"))
    except FileNotFoundError:
        raise RuntimeError(f"{store.url}: part {key} of {output.stage} has no marker") from None
    for rel in marker["files"]:
        _get(store, f"{prefix}/{rel}", folder / rel, folder.parent)
    return marker["files"]


def _forget_staging(stage_dir: Path, fingerprint: str) -> None:
    """Remove what units of a published output left in this machine's cache."""
    for name in (f".staged-{fingerprint}", f".staged-{fingerprint}.parts"):
        shutil.rmtree(stage_dir / name, ignore_errors=True)
    shutil.rmtree(stage_dir / f".units-{fingerprint}", ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class StoreUnit:
    """One unit of work as it travels to a worker: what to run on what, and where it meets."""

    fn: Callable[[Any], Any]
    unit: Any
    url: str  # the work dir
    origin: str  # the stage machine's cache of it
    stage: str
    fingerprint: str
    key: str  # this unit's part: `<attempt>-m<map>-u<unit>`
    parts: tuple[str, ...]  # the staged parts so far, in order
    folders: tuple[str, ...] = ()  # the partial folder's folders (an empty one too)


def run_unit(job: StoreUnit) -> tuple[Any, bool]:
    """Run one unit on this machine (see the module docstring); (its result, whether its
    files went to the store as part `job.key`)."""
    work = open_workdir(job.url)  # this machine's cache of the work dir
    origin = Path(job.origin)
    if work.local == origin:  # the stage machine itself: its partial folder is right here
        return job.fn(job.unit), False
    store = work.store
    assert store is not None
    local = work.local
    stage_dir = local / job.stage
    output = StageOutput(local, job.stage, job.fingerprint)
    partial = f".partial-{job.fingerprint}"
    private = stage_dir / f".units-{job.fingerprint}" / job.key
    upstream: set[tuple[str, str]] = set()

    def here(path: str) -> str | None:
        rel = _under(path, origin)
        if rel is None:
            return None
        if rel.parts[:2] == (job.stage, partial):
            return str(private.joinpath(*rel.parts[2:]))
        if len(rel.parts) >= 2 and not rel.parts[1].startswith("."):
            upstream.add((rel.parts[0], rel.parts[1]))  # a complete upstream output
        return str(local / rel)

    unit = rewrite(job.unit, here)
    for stage, fingerprint in sorted(upstream):
        if not store.pull(StageOutput(local, stage, fingerprint)):
            raise RuntimeError(f"{job.url}: {stage}/{fingerprint} is not complete on the store")
        _forget_staging(local / stage, fingerprint)  # that stage is done: its staging too
    staged = stage_dir / f".staged-{job.fingerprint}"
    applied = stage_dir / f".staged-{job.fingerprint}.parts"
    applied.mkdir(parents=True, exist_ok=True)
    for key in job.parts:  # once per machine: a part never changes once marked
        if not (applied / key).exists():
            pull_part(store, output, key, staged)
            (applied / key).touch()
    shutil.rmtree(private, ignore_errors=True)
    private.mkdir(parents=True)
    for folder in job.folders:
        (private / folder).mkdir(parents=True, exist_ok=True)
    for rel in _snapshot(staged):
        target = private / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(staged / rel, target)
        except FileExistsError:
            pass
        except OSError:  # no hard links here (another file system): a copy
            shutil.copy2(staged / rel, target)
    before = _snapshot(private)
    result = job.fn(unit)
    written = sorted(r for r, stat in _snapshot(private).items() if before.get(r) != stat)
    push_part(store, output, job.key, private, written)
    shutil.rmtree(private, ignore_errors=True)  # on the store now; the stage machine merges it

    def back(path: str) -> str | None:
        rel = _under(path, private)
        if rel is not None:
            return str(origin / job.stage / partial / rel)
        rel = _under(path, local)
        return None if rel is None else str(origin / rel)

    return rewrite(result, back), True


class StoreUnits(_Closing):
    """`inner`'s map, its units meeting through the store (see the module docstring)."""

    def __init__(self, inner: Executor, store: OutputStore, output: StageOutput):
        self.inner = inner
        self.workers = inner.workers
        self.store = store
        self.output = output
        self.maps = 0
        # Parts of this attempt only: a unit of an earlier attempt of the stage (its machine
        # lost, Dask ran the stage's task again elsewhere) may still push its part late.
        self.attempt = uuid.uuid4().hex[:8]
        self.parts: list[str] = []  # staged on the store so far, in order
        self.known: dict[str, tuple[int, int]] = {}  # partial folder files as staged

    def map(self, fn: Callable[[Any], T], units: Sequence[Any]) -> list[T]:
        if not units:
            return []
        number = self.maps
        self.maps += 1
        self._push_own(f"{self.attempt}-m{number:03d}-stage")
        partial = self.output.partial
        folders = tuple(
            sorted(p.relative_to(partial).as_posix() for p in partial.rglob("*") if p.is_dir())
        )
        jobs = [
            StoreUnit(
                fn,
                unit,
                self.store.url,
                str(self.store.local),
                self.output.stage,
                self.output.fingerprint,
                f"{self.attempt}-m{number:03d}-u{index:05d}",
                tuple(self.parts),
                folders,
            )
            for index, unit in enumerate(units)
        ]
        outcomes = self.inner.map(run_unit, jobs)
        for job, (_, pushed) in zip(jobs, outcomes, strict=True):
            if pushed:  # a unit of another machine: its part, into the partial folder
                for rel in pull_part(self.store, self.output, job.key, partial):
                    stat = (partial / rel).stat()
                    self.known[rel] = (stat.st_size, stat.st_mtime_ns)
                self.parts.append(job.key)
        return [result for result, _ in outcomes]

    def _push_own(self, key: str) -> None:
        """Stage what this machine wrote into the partial folder since the last map."""
        now = _snapshot(self.output.partial)
        changed = sorted(rel for rel, stat in now.items() if self.known.get(rel) != stat)
        if not changed:
            return
        push_part(self.store, self.output, key, self.output.partial, changed)
        self.known.update({rel: now[rel] for rel in changed})
        self.parts.append(key)
