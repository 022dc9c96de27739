"""Quarantine: where records that a stage refuses go, with their reason, never silently lost.

In: refused records (reason, source, locator, detail, the record or a prefix of it). Out:
`_quarantine.jsonl` in the stage's output folder and a per-reason count for the manifest.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

QUARANTINE_FILE = "_quarantine.jsonl"
MAX_RECORD_CHARS = 2000  # enough to recognise a record, small enough for a huge corpus


class Quarantine:
    def __init__(self, folder: Path):
        self.path = Path(folder) / QUARANTINE_FILE
        self.counts: Counter[str] = Counter()
        self._handle = None

    def add(
        self,
        reason: str,
        *,
        source: str = "",
        locator: str = "",
        detail: str = "",
        record: Any = None,
        **extra: Any,
    ) -> None:
        """`extra`: more fields of the entry (a decontamination match's eval set and example)."""
        self.counts[reason] += 1
        if self._handle is None:
            # A lone surrogate (from a JSON escape) is written as its escape, never a crash.
            self._handle = self.path.open("a", encoding="utf-8", errors="backslashreplace")
        if record is not None and not isinstance(record, str):
            record = json.dumps(record, ensure_ascii=False, default=str)
        entry = {
            "reason": reason,
            "source": source,
            "locator": locator,
            "detail": detail,
            "record": record[:MAX_RECORD_CHARS] if record else record,
            **extra,
        }
        self._handle.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> Quarantine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OnceQuarantine(Quarantine):
    """A quarantine that keeps one entry per (reason, source, locator): for files read more
    than once (the train and held-out splits of a task, or one task scored on two models)."""

    def __init__(self, folder: Path):
        super().__init__(folder)
        self._seen: set[tuple[str, str, str]] = set()

    def add(self, reason: str, *, source: str = "", locator: str = "", **kwargs: Any) -> None:
        key = (reason, source, locator)
        if key not in self._seen:
            self._seen.add(key)
            super().add(reason, source=source, locator=locator, **kwargs)


def read_quarantine(folder: Path) -> list[dict[str, Any]]:
    path = Path(folder) / QUARANTINE_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def join_unit_quarantines(out_dir: Path, parts: list[Path]) -> None:
    """Concatenate the units' quarantine files, in unit order, into the output's quarantine
    (none when they are all empty or absent)."""
    target = Path(out_dir) / QUARANTINE_FILE
    with target.open("wb") as joined:
        for part in parts:
            if part.is_file():
                joined.write(part.read_bytes())
    if target.stat().st_size == 0:
        target.unlink()
