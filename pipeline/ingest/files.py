"""Which files a source names, how to open them, and a fingerprint of their contents.

In: a source config (`path` is a file, a folder or a glob) and the folder relative paths resolve
from. Out: the matched files in a stable order, each with the display name that goes into
locators (and so into document ids), binary line streams that read `.gz` transparently, and
`source_input_fingerprint`, one hash per source that changes when its config or its files do.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path
from typing import IO

GLOB_CHARS = frozenset("*?[")
# Files above this size are fingerprinted by size and mtime: hashing a multi-GB dump on
# every run would cost more than the stage cache saves.
CONTENT_HASH_LIMIT = 256 * 1024 * 1024

# What a folder source picks up, per source type (a file or a glob given explicitly is read
# whatever its name). Hidden files and `_`-prefixed ones (manifests, quarantine) are skipped.
FOLDER_SUFFIXES = {
    "jsonl": (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz"),
    "csv": (".csv", ".tsv", ".csv.gz", ".tsv.gz"),
    "parquet": (".parquet", ".pq"),
    "text": (".txt", ".text", ".md", ".txt.gz", ".text.gz", ".md.gz"),
}


@dataclass
class SourceFiles:
    """The files a source matched, or why it matched none."""

    resolved: str  # the path pattern after resolving it against base_dir
    files: list[Path] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # display names, parallel to files
    problem: str | None = None  # "missing_path" | "no_files" | "unsupported_path"
    detail: str = ""


def resolve_source_path(path: str, base_dir: str | Path) -> str:
    """A source path as given, or joined to base_dir when relative (as config.resolve_path)."""
    if "://" in path or Path(path).is_absolute():
        return path
    return str(Path(base_dir) / path)


def display_name(file: Path, configured_path: str, base_dir: str | Path) -> str:
    """The name a file goes by in locators: relative to base_dir when the config path was
    relative, absolute otherwise, so ids do not depend on where the checkout lives."""
    if Path(configured_path).is_absolute():
        return Path(os.path.abspath(file)).as_posix()
    return Path(os.path.relpath(os.path.abspath(file), os.path.abspath(base_dir))).as_posix()


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith((".", "_")) for part in relative.parts)


def match_source_files(source_type: str, path: str, base_dir: str | Path) -> SourceFiles:
    """Expand a source path into files, sorted by display name for a deterministic order."""
    resolved = resolve_source_path(path, base_dir)
    if "://" in resolved:
        return SourceFiles(resolved, problem="unsupported_path", detail="remote URLs are not read")
    if any(ch in GLOB_CHARS for ch in resolved):
        files = [Path(p) for p in glob(resolved, recursive=True) if Path(p).is_file()]
        if not files:
            return SourceFiles(resolved, problem="no_files", detail="the glob matched no files")
    elif Path(resolved).is_dir():
        root = Path(resolved)
        suffixes = FOLDER_SUFFIXES[source_type]
        files = [
            p
            for p in root.rglob("*")
            if p.is_file()
            and p.name.lower().endswith(suffixes)
            and not _is_hidden(p.relative_to(root))
        ]
        if not files:
            return SourceFiles(
                resolved,
                problem="no_files",
                detail=f"the folder holds no {'/'.join(suffixes)} files",
            )
    elif Path(resolved).exists():
        files = [Path(resolved)]
    else:
        return SourceFiles(resolved, problem="missing_path", detail="no such file or folder")
    named = sorted((display_name(f, path, base_dir), f) for f in files)
    return SourceFiles(resolved, files=[f for _, f in named], names=[n for n, _ in named])


def open_binary(file: Path) -> IO[bytes]:
    """The file's bytes, gunzipped on the fly when its name ends in .gz."""
    if file.name.lower().endswith(".gz"):
        return gzip.open(file, "rb")
    return file.open("rb")


def decoded_lines(handle: IO[bytes]) -> Iterator[tuple[int, str, bool]]:
    """(line number from 1, text with its line ending, whether it held invalid UTF-8).

    Each line is decoded on its own so one bad byte costs one line a U+FFFD, not the file;
    a UTF-8 byte-order mark at the start of the file is dropped.
    """
    for number, raw in enumerate(handle, 1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            yield number, raw.decode("utf-8"), False
        except UnicodeDecodeError:
            yield number, raw.decode("utf-8", errors="replace"), True


def file_content_digest(file: Path) -> str:
    """blake2b of the bytes on disk (streamed); size and mtime for very large files."""
    stat = file.stat()
    if stat.st_size > CONTENT_HASH_LIMIT:
        return f"size={stat.st_size},mtime_ns={stat.st_mtime_ns}"
    digest = hashlib.blake2b(digest_size=16)
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_input_fingerprint(sources: list, base_dir: str | Path) -> list[str]:
    """One stable hash per source: its config plus, per matched file, name, size and contents.

    Names are the display names (relative to base_dir), so moving the checkout keeps the
    fingerprints; editing, adding or removing a file changes them.
    """
    fingerprints = []
    for source in sources:
        matched = match_source_files(source.type, source.path, base_dir)
        files: list[list] | str
        if matched.problem:
            files = f"{matched.problem}: {matched.detail}"
        else:
            files = []
            for name, file in zip(matched.names, matched.files, strict=True):
                try:
                    files.append([name, file.stat().st_size, file_content_digest(file)])
                except OSError as exc:
                    files.append([name, None, f"unreadable: {exc.strerror or exc}"])
        payload = json.dumps(
            {"source": source.model_dump(mode="json"), "files": files}, sort_keys=True
        )
        fingerprints.append(hashlib.blake2b(payload.encode(), digest_size=16).hexdigest())
    return fingerprints
