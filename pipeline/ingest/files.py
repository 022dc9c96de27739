"""Which files a source names, how to open them safely, and a fingerprint of their contents.

In: a source config (`path` is a file, a folder or a glob) and the folder relative paths resolve
from. Out: the matched files in a stable order, each with the display name that goes into
locators (and so into document ids); what was passed over and why (`Skipped`); bounded byte and
line streams; `source_input_fingerprint`, one hash per source that changes when its config or
its files do.

Hostile input is expected here:
- A source reads only inside its root (the folder, or a glob's fixed leading folders): a symlink
  out of it is skipped (`link_outside_root`) unless the source says `follow_links: true`. A
  symlink loop (`symlink_loop`), a dangling link (`broken_symlink`), a FIFO or device
  (`not_a_regular_file`) and folders nested deeper than `MAX_FOLDER_DEPTH` are skipped and
  reported, never followed; a file reached by two paths is read once. A file named explicitly
  is read wherever it points (the config named it).
- Opening never blocks (a FIFO swapped in after listing is refused) and `.gz` files are read
  member by member through `GzipMembers`, which stops a decompression bomb (`GzipBomb`) and,
  for WARC files, resumes at the next gzip member after a corrupt one.
- `TextLines` reads a line-based file: the encoding from its first bytes (`encoding.py`: BOM,
  UTF-8, BOM-less UTF-16/32, detection), a binary file refused before any line is read, and a
  line over `MAX_RECORD_BYTES` not held in memory: it comes back as an `Overlong` excerpt.
- Display names are always valid text: bytes of a file name that are not UTF-8 are written as
  backslash escapes (`latin1-\\xe9.jsonl`).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import translate
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pipeline.config import SOURCE_TYPES, ConfigError, PipelineConfig, source_description
from pipeline.ingest.encoding import SNIFF_BYTES, TextEncoding, detect_text_encoding, sniff_binary

if TYPE_CHECKING:
    from pipeline.quarantine import Quarantine

GLOB_CHARS = frozenset("*?[")
# Files above this size are fingerprinted by size and mtime: hashing a multi-GB dump on
# every run would cost more than the stage cache saves.
CONTENT_HASH_LIMIT = 256 * 1024 * 1024
# The largest record (a JSONL line, a CSV row, a text file or paragraph) read into memory.
# Clean refuses documents over 100,000 words (under 1 MB) anyway.
MAX_RECORD_BYTES = 16 * 1024 * 1024
EXCERPT_CHARS = 200  # what of a refused record the quarantine keeps
MAX_FOLDER_DEPTH = 64  # folders nested deeper than this are not read (and are reported)
READ_BUFFER = 1 << 20
# A gzip stream that inflates to more than this many times its compressed size, once past
# GZIP_BOMB_MIN_BYTES, is a decompression bomb (text compresses 3-20x).
GZIP_BOMB_RATIO = 200
GZIP_BOMB_MIN_BYTES = 64 * 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b\x08"


@dataclass(frozen=True)
class Skipped:
    """An entry a source did not read, and why (it goes to the quarantine, with no content)."""

    name: str  # display name
    reason: str  # symlink_loop | broken_symlink | link_outside_root | not_a_regular_file | ...
    detail: str


@dataclass
class SourceFiles:
    """The files a source matched, or why it matched none, and what it passed over."""

    resolved: str  # the path pattern after resolving it against base_dir
    files: list[Any] = field(default_factory=list)  # Paths, or fsspec URL strings
    names: list[str] = field(default_factory=list)  # display names, parallel to files
    problem: str | None = None  # "missing_path" | "no_files" | "unsupported_path"
    detail: str = ""
    skipped: list[Skipped] = field(default_factory=list)


def resolve_source_path(path: str, base_dir: str | Path) -> str:
    """A source path as given, or joined to base_dir when relative (as config.resolve_path)."""
    if "://" in path or Path(path).is_absolute():
        return path
    return str(Path(base_dir) / path)


def printable(name: str) -> str:
    """A name as valid text: bytes that were not UTF-8 (surrogate escapes) as `\\xNN`."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "surrogateescape")
        return raw.decode("utf-8", "backslashreplace")


def display_name(file: Path, configured_path: str, base_dir: str | Path) -> str:
    """The name a file goes by in locators: relative to base_dir when the config path was
    relative, absolute otherwise, so ids do not depend on where the checkout lives."""
    if Path(configured_path).is_absolute():
        return printable(Path(os.path.abspath(file)).as_posix())
    return printable(
        Path(os.path.relpath(os.path.abspath(file), os.path.abspath(base_dir))).as_posix()
    )


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith((".", "_")) for part in relative.parts)


# ------------------------------------------------------------------------------- listing


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


class _Walk:
    """Files under a root that match glob segments, with symlinks confined to the root and
    loops, dangling links and special files skipped and reported.

    A folder source walks `("**", "*")` with `wanted` its suffixes and `hidden` ".", "_"; a glob
    walks its own segments (`**`: any folders; `*`, `?`, `[...]` within a name; wildcards skip
    names that start with a dot, as glob does).
    """

    def __init__(
        self,
        root: Path,
        follow_links: bool,
        name_of: Any,
        wanted: Any = None,
        hidden: tuple[str, ...] = (".",),
    ):
        self.root = root
        self.root_real = os.path.realpath(root)
        self.follow_links = follow_links
        self.name_of = name_of  # Path -> display name
        self.wanted = wanted or (lambda name: True)
        self.hidden = hidden
        self.skipped: list[Skipped] = []
        self._candidates: dict[tuple[int, int], list[tuple[Path, bool]]] = {}
        self._reported: set[str] = set()

    def skip(self, path: Path, reason: str, detail: str) -> None:
        name = self.name_of(path)
        if name not in self._reported:
            self._reported.add(name)
            self.skipped.append(Skipped(name, reason, detail))

    def classify(self, path: Path, is_link: bool) -> tuple[str, os.stat_result | None]:
        """("file" | "dir", its stat), or (a skip reason, None)."""
        try:
            st = os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "symlink_loop", None
            if is_link and exc.errno == errno.ENOENT:
                return "broken_symlink", None
            if exc.errno == errno.ENOENT:
                return "vanished", None
            return "unreadable_path", None
        if is_link and not self.follow_links:
            if not _inside(os.path.realpath(path), self.root_real):
                return "link_outside_root", None
        if stat.S_ISDIR(st.st_mode):
            return "dir", st
        if stat.S_ISREG(st.st_mode):
            return "file", st
        return "not_a_regular_file", None

    def report(self, path: Path, kind: str) -> None:
        details = {
            "symlink_loop": "a symlink that leads back to itself or to a folder above it",
            "broken_symlink": "a symlink to nothing",
            "unreadable_path": "it cannot be read (permissions or I/O error)",
            "link_outside_root": "a symlink out of the source's folder; set follow_links: "
            "true on the source to read such links",
            "not_a_regular_file": "a FIFO, socket or device, not a file",
        }
        if kind != "vanished":  # gone between listing the folder and looking at it
            self.skip(path, kind, details.get(kind, kind))

    def add_file(self, path: Path, st: os.stat_result, is_link: bool) -> None:
        self._candidates.setdefault((st.st_dev, st.st_ino), []).append((path, is_link))

    @property
    def files(self) -> list[Path]:
        """The files found; a file reached by several paths once, by a path that is no link
        when it has one (the others are reported as `duplicate_path`)."""
        files = []
        for paths in self._candidates.values():
            keep = next((path for path, is_link in paths if not is_link), paths[0][0])
            files.append(keep)
            for path, _ in paths:
                if path != keep:
                    detail = f"a second path to {self.name_of(keep)}, read once"
                    self.skip(path, "duplicate_path", detail)
        return files

    def _listing(self, directory: Path, segment: str | None) -> Iterator[tuple]:
        """(path, is_link, kind, stat) of the entries matching `segment` (None: any name)."""
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.skip(directory, "unreadable_path", f"the folder cannot be listed: {exc.strerror}")
            return
        literal = segment is not None and not any(ch in GLOB_CHARS for ch in segment)
        pattern = re.compile(translate(segment)) if segment and not literal else None
        for entry in entries:
            name = entry.name
            if literal:
                if name != segment:
                    continue
            elif name.startswith(self.hidden) or (pattern and not pattern.match(name)):
                continue
            path = Path(entry.path)
            is_link = entry.is_symlink()
            yield (path, is_link, *self.classify(path, is_link))

    def _odd_link(self, path: Path, is_link: bool, kind: str) -> None:
        if is_link and kind in ("symlink_loop", "link_outside_root"):
            self.report(path, kind)

    def _leaf(self, path: Path, is_link: bool, kind: str, st: Any) -> None:
        if not self.wanted(path.name.lower()):
            self._odd_link(path, is_link, kind)
        elif kind == "file":
            self.add_file(path, st, is_link)
        else:
            self.report(path, kind)

    def _descend(
        self, path: Path, st: Any, segments: tuple[str, ...], ancestors: frozenset
    ) -> None:
        key = (st.st_dev, st.st_ino)
        if key in ancestors:  # a link back to a folder above: a loop
            self.report(path, "symlink_loop")
        else:
            self.glob(path, segments, ancestors | {key})

    def glob(self, directory: Path, segments: tuple[str, ...], ancestors: frozenset) -> None:
        """Files under `directory` matching `segments`; `ancestors`: the folders above it."""
        if len(ancestors) > MAX_FOLDER_DEPTH:
            self.skip(directory, "folder_too_deep", f"more than {MAX_FOLDER_DEPTH} folders deep")
            return
        segment, rest = segments[0], segments[1:]
        if segment == "**":
            if rest:
                self.glob(directory, rest, ancestors)
            for path, is_link, kind, st in self._listing(directory, None):
                if kind == "dir":
                    self._descend(path, st, segments, ancestors)
                elif not rest:  # a trailing ** matches files too
                    self._leaf(path, is_link, kind, st)
                else:
                    self._odd_link(path, is_link, kind)
            return
        for path, is_link, kind, st in self._listing(directory, segment):
            if rest and kind == "dir":
                self._descend(path, st, rest, ancestors)
            elif rest:
                self._odd_link(path, is_link, kind)
            elif kind != "dir":
                self._leaf(path, is_link, kind, st)


def _glob_root(resolved: str) -> tuple[Path, tuple[str, ...]]:
    """A glob's fixed leading folders and its remaining segments."""
    parts = Path(resolved).parts
    for index, part in enumerate(parts):
        if any(ch in GLOB_CHARS for ch in part):
            return (Path(*parts[:index]) if index else Path(".")), tuple(parts[index:])
    return Path(resolved), ()


def match_source_files(
    kind: str | tuple[str, ...], path: str, base_dir: str | Path, follow_links: bool = False
) -> SourceFiles:
    """Expand a source path into files, sorted by display name for a deterministic order.

    `kind`: the file name endings a folder's files are picked up by (`Source.folder_suffixes`),
    or a source type's name for those of its config class. A file or a glob given explicitly
    is read whatever its name; hidden files and `_`-prefixed ones (manifests, quarantine) in a
    folder are skipped."""
    resolved = resolve_source_path(path, base_dir)
    if is_url(resolved):
        return _match_url_files(folder_suffixes(kind), resolved)

    def name_of(file: Path) -> str:
        return display_name(file, path, base_dir)

    if any(ch in GLOB_CHARS for ch in resolved):
        root, segments = _glob_root(resolved)
        walk = _Walk(root, follow_links, name_of)
        if root.is_dir():
            st = os.stat(root)
            walk.glob(root, segments, frozenset({(st.st_dev, st.st_ino)}))
        found = walk.files
        if not found:
            return SourceFiles(
                resolved,
                problem="no_files",
                detail="the glob matched no files",
                skipped=walk.skipped,
            )
    elif Path(resolved).is_dir():
        root = Path(resolved)
        suffixes = folder_suffixes(kind)
        walk = _Walk(root, follow_links, name_of, lambda n: n.endswith(suffixes), (".", "_"))
        st = os.stat(root)
        walk.glob(root, ("**", "*"), frozenset({(st.st_dev, st.st_ino)}))
        found = walk.files
        if not found:
            return SourceFiles(
                resolved,
                problem="no_files",
                detail=f"the folder holds no {'/'.join(suffixes)} files",
                skipped=walk.skipped,
            )
    else:
        single = Path(resolved)
        walk = _Walk(single.parent, True, name_of)  # a file named explicitly: wherever it is
        kind, st = walk.classify(single, single.is_symlink())
        if kind == "file":
            walk.add_file(single, st, False)
            found = walk.files
        elif kind in ("vanished", "broken_symlink"):
            return SourceFiles(resolved, problem="missing_path", detail="no such file or folder")
        else:
            walk.report(single, kind)
            return SourceFiles(
                resolved,
                problem="no_files",
                detail=f"not a readable file ({kind})",
                skipped=walk.skipped,
            )
    named = sorted((display_name(f, path, base_dir), f) for f in found)
    return SourceFiles(
        resolved, files=[f for _, f in named], names=[n for n, _ in named], skipped=walk.skipped
    )


def is_url(path: Any) -> bool:
    return isinstance(path, str) and "://" in path


def folder_suffixes(kind: str | tuple[str, ...]) -> tuple[str, ...]:
    return kind if isinstance(kind, tuple) else SOURCE_TYPES[kind].folder_suffixes


def _match_url_files(suffixes: tuple[str, ...], url: str) -> SourceFiles:
    """Files behind an fsspec URL (file://, s3://, https://, ...): a file, a folder or a glob.

    Their display names are the URLs themselves."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
        if any(ch in GLOB_CHARS for ch in root):
            paths = [p for p in fs.glob(root) if fs.isfile(p)]
        elif fs.isdir(root):
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


# ------------------------------------------------------------------------------- opening


class NotRegularFile(OSError):
    """The path is a FIFO, socket, device or folder (perhaps swapped in after listing)."""


class GzipBomb(OSError):
    """A gzip stream that inflates far beyond what text compresses to."""


def _open_local(path: Any) -> IO[bytes]:
    # O_NONBLOCK: opening a FIFO for reading would wait for a writer forever.
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file (a FIFO, socket or device)")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb", buffering=READ_BUFFER)


def open_raw(file: Any) -> IO[bytes]:
    """The file's bytes as stored (no decompression); a local path or an fsspec URL."""
    if is_url(file):
        import fsspec

        return fsspec.open(file, "rb").open()
    return _open_local(file)


@dataclass
class GzipLoss:
    """A stretch of a gzip file that could not be read (recovering readers go on after it)."""

    offset: int  # compressed offset where the bad member began
    skipped: int  # compressed bytes passed over to the next member (or the end)
    error: str
    resumed_at: int | None  # decompressed offset where reading resumed; None: the file ended


class GzipMembers(io.RawIOBase):
    """The decompressed bytes of a gzip file, member after member, read linearly.

    - A stream cut short raises EOFError, as `gzip` does; a corrupt one `zlib.error`, or, with
      `recover`, skips to the next member's magic bytes and goes on (each loss in `losses`).
    - More than GZIP_BOMB_RATIO times the compressed bytes (past GZIP_BOMB_MIN_BYTES) raises
      `GzipBomb`: a stream of zeros is not read to its end.
    """

    CHUNK = 256 * 1024

    def __init__(self, raw: IO[bytes], recover: bool = False):
        super().__init__()
        self._raw = raw
        self.recover = recover
        self.losses: list[GzipLoss] = []
        self._input = b""  # compressed bytes read and not yet fed
        self._input_offset = 0  # compressed offset of _input[0]
        self._member: Any = None
        self._member_offset = 0
        self._output = b""
        self._output_pos = 0
        self.compressed_in = 0
        self.decompressed_out = 0
        self._raw_eof = False
        self._eof = False

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()

    def _more_input(self) -> bool:
        if self._raw_eof:
            return False
        data = self._raw.read(self.CHUNK)
        if not data:
            self._raw_eof = True
            return False
        self._input += data
        return True

    def _consume(self, count: int) -> None:
        self._input = self._input[count:]
        self._input_offset += count

    def _skip_to_member(self, error: str, start: int) -> None:
        """Drop compressed bytes up to the next gzip magic after `start` (recover mode)."""
        skipped_from = self._member_offset
        while True:
            found = self._input.find(GZIP_MAGIC, max(0, start - self._input_offset))
            if found >= 0:
                self._consume(found)
                break
            keep = len(GZIP_MAGIC) - 1
            start = self._input_offset + max(0, len(self._input) - keep)
            self._consume(max(0, len(self._input) - keep))
            if not self._more_input():
                self._consume(len(self._input))
                break
        resumed = None if not self._input else self.decompressed_out
        self.losses.append(
            GzipLoss(skipped_from, self._input_offset - skipped_from, error, resumed)
        )

    def _start_member(self) -> bool:
        """Position at the next member; False at the regular end of the file."""
        while True:
            while len(self._input) < 3 and self._more_input():
                pass
            stripped = self._input.lstrip(b"\x00")  # zero padding after the last member
            while not stripped and self._more_input():
                stripped = self._input.lstrip(b"\x00")
            if not stripped:
                self._consume(len(self._input))
                return False
            self._consume(len(self._input) - len(stripped))
            while len(self._input) < 3 and self._more_input():
                pass
            if self._input.startswith(GZIP_MAGIC):
                self._member = zlib.decompressobj(wbits=31)
                self._member_offset = self._input_offset
                return True
            error = f"not a gzip member at byte {self._input_offset:,}"
            if not self.recover:
                raise zlib.error(error)
            self._member_offset = self._input_offset
            self._skip_to_member(error, self._input_offset + 1)

    def _fill(self, size: int) -> None:
        while not self._eof:
            if self._member is None and not self._start_member():
                self._eof = True
                return
            if not self._input:
                self._more_input()
            before = len(self._input)
            try:
                # At the end of the input this still returns what zlib holds back.
                out = self._member.decompress(self._input, max(size, 8192))
            except zlib.error as exc:
                if not self.recover:
                    raise
                self._member = None
                self._skip_to_member(f"{exc}", self._member_offset + 1)
                continue
            member_done = self._member.eof
            rest = self._member.unused_data if member_done else self._member.unconsumed_tail
            used = before - len(rest)
            self._input = rest
            self._input_offset += used
            self.compressed_in += used
            if member_done:
                self._member = None
            elif not out and not self._input and self._raw_eof:
                raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            if out:
                self.decompressed_out += len(out)
                if (
                    self.decompressed_out > GZIP_BOMB_MIN_BYTES
                    and self.decompressed_out > GZIP_BOMB_RATIO * max(1, self.compressed_in)
                ):
                    raise GzipBomb(
                        errno.EFBIG,
                        f"a decompression bomb: {self.decompressed_out:,} bytes from "
                        f"{self.compressed_in:,} compressed (over {GZIP_BOMB_RATIO}x)",
                    )
                self._output, self._output_pos = out, 0
                return

    def readinto(self, buffer: Any) -> int:
        if self._output_pos >= len(self._output):
            self._output, self._output_pos = b"", 0
            self._fill(len(buffer))
        count = min(len(buffer), len(self._output) - self._output_pos)
        buffer[:count] = self._output[self._output_pos : self._output_pos + count]
        self._output_pos += count
        return count


def open_binary(file: Any, recover: bool = False) -> IO[bytes]:
    """The file's bytes, gunzipped on the fly (bounded: see GzipMembers) when its name ends in
    .gz; `recover`: go on after a corrupt gzip member (the losses are in `gzip_losses`)."""
    raw = open_raw(file)
    if not file_name(file).lower().endswith(".gz"):
        return raw
    return io.BufferedReader(GzipMembers(raw, recover), buffer_size=READ_BUFFER)


def gzip_losses(handle: Any) -> list[GzipLoss]:
    members = getattr(handle, "raw", None)
    return members.losses if isinstance(members, GzipMembers) else []


# ------------------------------------------------------------------------------ text lines


class Overlong(str):
    """A line over the record limit: its first EXCERPT_CHARS characters, and `size` in bytes.
    The rest of the line was read past, not kept."""

    size: int = 0


@dataclass
class Line:
    number: int
    text: str  # with its line ending; an `Overlong` excerpt when the line was too long
    invalid: bool = False  # bytes not valid in the file's encoding were replaced by U+FFFD


class _Prefixed(io.RawIOBase):
    """`head` (bytes already read), then the rest of `handle`."""

    def __init__(self, head: bytes, handle: Any):
        super().__init__()
        self._head = head
        self._pos = 0
        self._handle = handle

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._pos < len(self._head):
            count = min(len(buffer), len(self._head) - self._pos)
            buffer[:count] = self._head[self._pos : self._pos + count]
            self._pos += count
            return count
        data = self._handle.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readline(self, limit: int = -1) -> bytes:
        if limit is None or limit < 0:
            limit = 1 << 62
        if self._pos >= len(self._head):
            return self._handle.readline(limit)
        end = self._head.find(b"\n", self._pos, self._pos + limit)
        if end >= 0:
            line = self._head[self._pos : end + 1]
            self._pos = end + 1
            return line
        take = min(limit, len(self._head) - self._pos)
        part = self._head[self._pos : self._pos + take]
        self._pos += take
        if len(part) >= limit:
            return part
        return part + self._handle.readline(limit - len(part))


def _overlong(excerpt: str, size: int) -> Overlong:
    line = Overlong(excerpt[:EXCERPT_CHARS])
    line.size = size
    return line


class TextLines:
    """The decoded lines of a line-based file (or of a byte span of one), bounded.

    The encoding comes from the file's first bytes (`encoding.detect_text_encoding`); `binary`
    says why the file is no text at all (the readers refuse it whole). Lines end at b"\n" only.
    """

    def __init__(
        self,
        handle: Any,
        first_line: int = 1,
        span: Any = None,
        max_line_bytes: int = MAX_RECORD_BYTES,
    ):
        self.first_line = first_line
        self.max_line_bytes = max_line_bytes
        self._span = span
        if span is not None:
            handle.seek(0)
            head = handle.read(SNIFF_BYTES)
            handle.seek(span.start)
            self._stream: Any = handle
            self._at_start = span.start == 0
        else:
            head = handle.read(SNIFF_BYTES)
            self._stream = _Prefixed(head, handle)
            self._at_start = True
        self.empty = not head
        self.binary = sniff_binary(head)
        self.encoding: TextEncoding = detect_text_encoding(head)

    def __iter__(self) -> Iterator[Line]:
        if self.encoding.ascii_lines:
            return self._byte_lines()
        return self._wide_lines()

    def _byte_lines(self) -> Iterator[Line]:
        codec = self.encoding.codec
        limit = self.max_line_bytes + 1
        stream = self._stream
        end = self._span.end if self._span is not None else None
        position = self._span.start if self._span is not None else 0
        number = self.first_line
        while end is None or position < end:
            raw = stream.readline(limit)
            if not raw:
                return
            position += len(raw)
            if number == self.first_line and self._at_start and self.encoding.bom:
                raw = raw[self.encoding.bom :]
            if len(raw) >= limit and not raw.endswith(b"\n"):
                size = len(raw)
                while True:
                    more = stream.readline(READ_BUFFER)
                    size += len(more)
                    position += len(more)
                    if not more or more.endswith(b"\n"):
                        break
                excerpt = raw[: EXCERPT_CHARS * 4].decode(codec, errors="replace")
                yield Line(number, _overlong(excerpt, size), False)
            else:
                try:
                    yield Line(number, raw.decode(codec), False)
                except UnicodeDecodeError:
                    yield Line(number, raw.decode(codec, errors="replace"), True)
            number += 1

    def _wide_lines(self) -> Iterator[Line]:
        """UTF-16/32: decoded as a text stream, then cut at "\n"."""
        text = io.TextIOWrapper(
            io.BufferedReader(self._stream, READ_BUFFER),
            encoding=self.encoding.codec,
            errors="replace",
            newline="\n",
        )
        limit = self.max_line_bytes // 2 + 1
        number = self.first_line
        while True:
            line = text.readline(limit)
            if not line:
                return
            if number == self.first_line:
                line = line.removeprefix("\ufeff")
            if len(line) >= limit and not line.endswith("\n"):
                size = len(line) * 2
                while True:
                    more = text.readline(READ_BUFFER)
                    size += len(more) * 2
                    if not more or more.endswith("\n"):
                        break
                yield Line(number, _overlong(line, size), False)
            else:
                yield Line(number, line, "\ufffd" in line)
            number += 1


def decoded_lines(handle: Any, first_line: int = 1) -> Iterator[tuple[int, str, bool]]:
    """(line number from `first_line`, text with its line ending, whether it held bytes invalid
    in the file's encoding), for a binary handle.

    Each line is decoded on its own so one bad byte costs one line a U+FFFD, not the file; a
    byte-order mark is dropped; a line over MAX_RECORD_BYTES comes as an `Overlong` excerpt.
    """
    for line in TextLines(handle, first_line):
        yield line.number, line.text, line.invalid


def file_content_digest(file: Any) -> str:
    """blake2b of the bytes on disk (streamed); size and mtime for very large files and for
    remote URLs (an ETag or a checksum where the filesystem gives one)."""
    if is_url(file):
        import fsspec

        fs, path = fsspec.core.url_to_fs(file)
        info = fs.info(path)
        keys = ("ETag", "etag", "md5", "checksum", "mtime", "LastModified", "last_modified")
        return json.dumps({k: str(info[k]) for k in keys if k in info}, sort_keys=True)
    info = file.stat()
    if info.st_size > CONTENT_HASH_LIMIT:
        return f"size={info.st_size},mtime_ns={info.st_mtime_ns}"
    digest = hashlib.blake2b(digest_size=16)
    with _open_local(file) as handle:
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
    """One stable hash per source: its config plus, per matched file, name, size and contents
    (and what was skipped, by name and reason).

    Names are the display names (relative to base_dir), so moving the checkout keeps the
    fingerprints; editing, adding or removing a file changes them.
    """
    fingerprints = []
    for source in sources:
        matched = match_source_files(
            source.folder_suffixes, source.path, base_dir, getattr(source, "follow_links", False)
        )
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
        payload: dict[str, Any] = {"source": source_description(source), "files": files}
        if matched.skipped:
            payload["skipped"] = [[s.name, s.reason] for s in matched.skipped]
        fingerprints.append(
            hashlib.blake2b(
                json.dumps(payload, sort_keys=True).encode(), digest_size=16
            ).hexdigest()
        )
    return fingerprints


def jsonl_records(
    files: list[tuple[str, Path]], name: str, quarantine: Quarantine
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(locator, record) for each JSON object line of the files; bad lines quarantined (with
    an excerpt), as are binary files and lines over MAX_RECORD_BYTES."""
    for display, path in files:
        try:
            with open_binary(path) as handle:
                lines = TextLines(handle)
                if lines.binary:
                    quarantine.add("binary_file", source=name, locator=display, detail=lines.binary)
                    continue
                for line in lines:
                    text = line.text
                    locator = f"{display}:{line.number}"
                    if isinstance(text, Overlong):
                        quarantine.add(
                            "line_too_long",
                            source=name,
                            locator=locator,
                            detail=f"{text.size:,} bytes > {MAX_RECORD_BYTES:,}",
                            record=str(text),
                        )
                        continue
                    if not text.strip():
                        continue
                    try:
                        record = json.loads(text)
                    except (ValueError, RecursionError) as exc:
                        quarantine.add(
                            "invalid_json",
                            source=name,
                            locator=locator,
                            detail=str(exc)[:500],
                            record=text[:EXCERPT_CHARS],
                        )
                        continue
                    if not isinstance(record, dict):
                        quarantine.add(
                            "not_an_object",
                            source=name,
                            locator=locator,
                            record=text[:EXCERPT_CHARS],
                        )
                        continue
                    yield locator, record
        except (EOFError, zlib.error, OSError) as exc:
            quarantine.add(
                "unreadable_file",
                source=name,
                locator=display,
                detail=f"{type(exc).__name__}: {exc}",
            )


# ------------------------------------------------------------------- before a run


def require_source_files(config: PipelineConfig) -> None:
    """Before a pipeline run: every local source matches a file (ConfigError naming the keys).

    Not part of `validate_config`: a config is also read where its sources are not (`llmpipe
    eval --config`, a deployment made on another machine than the worker that runs it)."""
    missing = missing_source_files(config) if config.pretrains else []
    if missing:
        raise ConfigError("invalid config:\n" + "\n".join("  - " + m for m in missing))


def missing_source_files(config: PipelineConfig) -> list[str]:
    """One line per local source whose path matches no file and is not marked `optional`.

    A path that may name something else than a file (`local_only` false: a Hugging Face hub
    name) and a URL are not looked up before the run: both are left to ingest, which
    quarantines what it cannot read."""
    lines = []
    for number, source in enumerate(config.sources):
        if source.optional or not source.local_only or is_url(source.path):
            continue
        matched = match_source_files(source.folder_suffixes, source.path, config.base_dir)
        if matched.problem in ("missing_path", "no_files"):
            label = source.name or f"{source.type}:{source.path}"
            lines.append(
                f"sources.{number}.path: {matched.detail} for source {label!r}: "
                f"{matched.resolved} (set `optional: true` on the source to skip it when "
                "nothing matches)"
            )
    return lines
