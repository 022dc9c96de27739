"""Finding and reading the files of an evaluation task (shared by evaluate, decontaminate and
tracking, which therefore need not import one another).

In: one file task of the `evaluate` config (its `path`, and its class's `folder_kind`: which
files a folder holds) and the folder relative paths resolve from. Out: the task's (display name, path) pairs, or `TaskSkipped` when it names
no file; a file's text (UTF-8, newlines normalized); HellaSwag's text cleanup.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pipeline.ingest.files import match_source_files, open_binary


class TaskSkipped(Exception):
    """The task cannot run here (its file is absent and marked `missing: skip`, no val shards)."""


def task_files(task: Any, base_dir: str) -> list[tuple[str, Path]]:
    """(display name, path) of the files a file task names; TaskSkipped when there are none."""
    matched = match_source_files(task.folder_kind, task.path, base_dir)
    if matched.problem:
        raise TaskSkipped(f"{task.path}: {matched.detail or matched.problem}")
    return list(zip(matched.names, matched.files, strict=True))


def read_text(path: Path) -> str:
    with open_binary(path) as handle:
        return handle.read().decode("utf-8", errors="replace").replace("\r\n", "\n")


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag cleanup: WikiHow's [title]/[step]/[header] markers out."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")
