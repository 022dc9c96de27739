"""Stage output folders and what a stage produced: fingerprints, results, atomic publication.

In: a stage name, its code version, the config fields that change its output and the
fingerprints of its inputs; after the stage ran, its `StageResult`. Out:
`<workdir>/<stage>/<fingerprint>/`, holding the stage's files and its result as
`_manifest.json`. A folder with a manifest is complete; a stage writes into
`<workdir>/<stage>/.partial-<fingerprint>/` and renames it into place only when done, so a
crash never leaves something a later run could take for a finished output. While a stage runs,
`<workdir>/<stage>/.<fingerprint>.lease` says who writes it (pipeline/leases.py).

This module is the only one that reads or writes `_manifest.json`: everything else gets a
`StageResult` (`read_result`, `StageOutput.result`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.leases import lease

MANIFEST = "_manifest.json"


def fingerprint(stage: str, version: int, config: dict[str, Any], inputs: list[str]) -> str:
    """A short stable hash of what determines a stage's output."""
    payload = json.dumps(
        {"stage": stage, "version": version, "config": config, "inputs": inputs},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def write_json_atomic(path: Path, data: Any, mode: int = 0o666) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file.

    `mode` (less the umask) is the file's from its creation: 0o600 keeps it to its owner."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest as JSON (the result's serialized form, for tools that want the file)."""
    return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))


def read_result(folder: Path) -> StageResult:
    """The result of the complete stage output in `folder`."""
    return StageResult.from_dict(read_manifest(folder))


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

    def result(self) -> StageResult:
        return read_result(self.path)

    @classmethod
    def at(cls, folder: str | Path, stage: str) -> StageOutput:
        """The output in an existing folder `<workdir>/<stage>/<fingerprint>`; ValueError when
        it is not a complete output of that stage."""
        path = Path(folder)
        if path.parent.name != stage or not is_complete(path):
            raise ValueError(f"{folder} is not a complete {stage} output")
        return cls(path.parent.parent, stage, path.name)


@contextmanager
def building(
    output: StageOutput,
    keep_partial: bool = False,
    wait_seconds: float = 0.0,
    log: Callable[[str], None] = lambda _: None,
) -> Iterator[Path]:
    """Yield the partial folder to write into; the caller publishes it with `publish`.

    `keep_partial=True` keeps what a killed earlier attempt left (training resumes from its
    checkpoints); otherwise the partial folder starts empty.
    """
    with lease(output.lease, wait_seconds, log):
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


def publish(output: StageOutput, result: StageResult) -> Path:
    """Write the result into the partial folder, then rename it into place."""
    if output.path.exists():  # an older incomplete folder: it was never published
        shutil.rmtree(output.path)
    result.stage, result.fingerprint = output.stage, output.fingerprint
    write_json_atomic(output.partial / MANIFEST, result.to_dict())
    os.replace(output.partial, output.path)
    return output.path


# ----------------------------------------------------------------------------- results

RECORD_FIELDS = (
    "stage",
    "fingerprint",
    "config",
    "inputs",
    "code_version",
    "seconds",
    "finished_at",
)
MEASURE_FIELDS = ("counts", "stats", "metrics", "files")


@dataclass
class StageResult:
    """What a stage produced, beside its files.

    - counts: how many of what went in, out, and where the rest went: numbers, and maps of
      numbers by reason / source / language (`documents`, `kept`, `quarantined_by_reason`...);
    - stats: facts about the output (vocab_size, tokens, bytes per token...);
    - metrics: measured quality (val_loss, acc, ...), the numbers MLflow charts;
    - tables: named row tables (eval_table, rules, generations, examples...), each a list of
      dicts;
    - files: what the output folder holds, name -> relative path;
    - details: any other structured record (a registered version, a contamination report...),
      never a list (lists are tables).
    How it was made (stage, fingerprint, fingerprinted config, input fingerprints, code
    version, seconds, finish time) is recorded by `pipeline.dag.run_stage`; `reused` says that
    a run found it complete instead of making it.

    The manifest stores the fields flat: `counts`, `stats`, `metrics`, `files`, each table and
    each detail under its own name, beside the record; `from_dict` reads that layout back.
    """

    counts: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    stage: str = ""
    fingerprint: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    code_version: int = 0
    seconds: float = 0.0
    finished_at: str = ""
    reused: bool = False

    def __post_init__(self) -> None:
        names = set(self.tables) | set(self.details)
        clash = names & (
            set(RECORD_FIELDS) | set(MEASURE_FIELDS) | set(self.tables) & set(self.details)
        )
        if clash:
            raise ValueError(f"result names used twice or reserved: {sorted(clash)}")
        for name, value in self.details.items():
            if isinstance(value, list):
                raise TypeError(f"detail {name!r} is a list: a list of rows is a table")
        for name, rows in self.tables.items():
            if not isinstance(rows, list):
                raise TypeError(f"table {name!r} is not a list of rows")

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> StageResult:
        """From the dict a stage's implementation returns: `counts`, `stats`, `metrics` and
        `files` as such, lists as tables, everything else as details."""
        measures = {k: dict(body.get(k) or {}) for k in MEASURE_FIELDS}
        rest = {k: v for k, v in body.items() if k not in MEASURE_FIELDS}
        return cls(
            **measures,
            tables={k: v for k, v in rest.items() if isinstance(v, list)},
            details={k: v for k, v in rest.items() if not isinstance(v, list)},
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageResult:
        """From a manifest (or `to_dict()`); keys that orchestrators add beside it are ignored
        only when they are not part of the result (see `ORCHESTRATION_KEYS`)."""
        data = {k: v for k, v in data.items() if k not in ORCHESTRATION_KEYS}
        record = {k: data.pop(k) for k in RECORD_FIELDS if k in data}
        result = cls.from_body(data)
        for key, value in record.items():
            setattr(result, key, value)
        return result

    def to_dict(self) -> dict[str, Any]:
        """The manifest: flat, JSON-ready."""
        out: dict[str, Any] = {k: getattr(self, k) for k in MEASURE_FIELDS if getattr(self, k)}
        out.update(self.tables)
        out.update(self.details)
        out.update({k: getattr(self, k) for k in RECORD_FIELDS})
        return out


# Keys that orchestrators (flows/pipeline.py) put beside a result in a run's summary.
ORCHESTRATION_KEYS = frozenset(
    {"reused", "cached", "stage_run_id", "output", "mlflow_run_id", "prefect_artifact_id"}
)


def merge_counts(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """`part`'s counts added into `total` (in place; returned): numbers add, maps merge key by
    key, anything else takes the latest value. The one merge of per-unit partial counts."""
    for key, value in part.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, dict)):
            total[key] = value
        elif isinstance(value, dict):
            merge_counts(total.setdefault(key, {}), value)
        else:
            total[key] = total.get(key, 0) + value
    return total
