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
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.quarantine import Quarantine

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
    "warc": (".warc", ".warc.gz", ".arc", ".arc.gz"),
    "html": (".html", ".htm", ".xhtml", ".html.gz", ".htm.gz", ".xhtml.gz"),
    "feed": (".rss", ".atom", ".xml", ".rdf", ".json", ".rss.gz", ".atom.gz", ".xml.gz"),
    "hf": (".parquet", ".jsonl", ".json", ".csv", ".arrow", ".jsonl.gz", ".json.gz", ".csv.gz"),
}


@dataclass
class SourceFiles:
    """The files a source matched, or why it matched none."""

    resolved: str  # the path pattern after resolving it against base_dir
    files: list[Any] = field(default_factory=list)  # Paths, or fsspec URL strings
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
    if is_url(resolved):
        return _match_url_files(source_type, resolved)
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


def is_url(path: Any) -> bool:
    return isinstance(path, str) and "://" in path


def _match_url_files(source_type: str, url: str) -> SourceFiles:
    """Files behind an fsspec URL (file://, s3://, https://, ...): a file, a folder or a glob.

    Their display names are the URLs themselves."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
        if any(ch in GLOB_CHARS for ch in root):
            paths = [p for p in fs.glob(root) if fs.isfile(p)]
        elif fs.isdir(root):
            suffixes = FOLDER_SUFFIXES[source_type]
            paths = [
                p
                for p in fs.find(root)
                if p.lower().endswith(suffixes)
                and not _is_hidden(Path(p[len(root.rstrip("/")) :].lstrip("/")))
            ]
        elif fs.exists(root):
            paths = [root]
        else:
            return SourceFiles(url, problem="missing_path", detail="no such file or folder")
        urls = sorted(fs.unstrip_protocol(p) for p in paths)
    except (ImportError, ValueError, OSError) as exc:
        return SourceFiles(url, problem="unreadable_path", detail=f"{type(exc).__name__}: {exc}")
    if not urls:
        return SourceFiles(url, problem="no_files", detail="the URL matched no files")
    return SourceFiles(url, files=urls, names=urls)


def file_name(file: Any) -> str:
    return file.rsplit("/", 1)[-1] if is_url(file) else Path(file).name


def open_raw(file: Any) -> IO[bytes]:
    """The file's bytes as stored (no decompression); a local path or an fsspec URL."""
    if is_url(file):
        import fsspec

        return fsspec.open(file, "rb").open()
    return Path(file).open("rb")


def open_binary(file: Any) -> IO[bytes]:
    """The file's bytes, gunzipped on the fly when its name ends in .gz."""
    gz = file_name(file).lower().endswith(".gz")
    if is_url(file):
        import fsspec

        return fsspec.open(file, "rb", compression="gzip" if gz else None).open()
    return gzip.open(file, "rb") if gz else Path(file).open("rb")


def decoded_lines(handle: Any, first_line: int = 1) -> Iterator[tuple[int, str, bool]]:
    """(line number from `first_line`, text with its line ending, whether it held invalid
    UTF-8), for a binary handle or any iterable of byte lines.

    Each line is decoded on its own so one bad byte costs one line a U+FFFD, not the file;
    a UTF-8 byte-order mark at the start of the file is dropped.
    """
    for number, raw in enumerate(handle, first_line):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            yield number, raw.decode("utf-8"), False
        except UnicodeDecodeError:
            yield number, raw.decode("utf-8", errors="replace"), True


def file_content_digest(file: Any) -> str:
    """blake2b of the bytes on disk (streamed); size and mtime for very large files and for
    remote URLs (an ETag or a checksum where the filesystem gives one)."""
    if is_url(file):
        import fsspec

        fs, path = fsspec.core.url_to_fs(file)
        info = fs.info(path)
        keys = ("ETag", "etag", "md5", "checksum", "mtime", "LastModified", "last_modified")
        return json.dumps({k: str(info[k]) for k in keys if k in info}, sort_keys=True)
    stat = file.stat()
    if stat.st_size > CONTENT_HASH_LIMIT:
        return f"size={stat.st_size},mtime_ns={stat.st_mtime_ns}"
    digest = hashlib.blake2b(digest_size=16)
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_size(file: Any) -> int:
    if is_url(file):
        import fsspec

        fs, path = fsspec.core.url_to_fs(file)
        return int(fs.size(path) or 0)
    return Path(file).stat().st_size


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
                    files.append([name, file_size(file), file_content_digest(file)])
                except OSError as exc:
                    files.append([name, None, f"unreadable: {exc.strerror or exc}"])
        from pipeline.config import source_description  # config imports this module

        described = {"source": source_description(source), "files": files}
        payload = json.dumps(described, sort_keys=True)
        fingerprints.append(hashlib.blake2b(payload.encode(), digest_size=16).hexdigest())
    return fingerprints


def jsonl_records(
    files: list[tuple[str, Path]], name: str, quarantine: Quarantine
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(locator, record) for each JSON object line of the files; bad lines quarantined."""
    for display, path in files:
        with open_binary(path) as handle:
            for number, line, _ in decoded_lines(handle):
                if not line.strip():
                    continue
                locator = f"{display}:{number}"
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    quarantine.add(
                        "invalid_json", source=name, locator=locator, detail=str(exc), record=line
                    )
                    continue
                if not isinstance(record, dict):
                    quarantine.add("not_an_object", source=name, locator=locator, record=line)
                    continue
                yield locator, record
