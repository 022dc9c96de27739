"""Record readers of the built-in record source types (see kinds.py): a file in, a stream of records and problems out.

In: one file of a source (JSONL, CSV, Parquet or text; `.gz` for the line-based ones) and its
display name. Out: `RawRecord`s (a locator such as `name:12` or `name#3`, the record's fields,
whether invalid UTF-8 was replaced) interleaved with `ReadProblem`s for what could not be read
(a malformed JSON line, a CSV row of the wrong width, a truncated gzip, ...). Readers stream:
at most one record, or one text paragraph, is held at a time, and never one over
`MAX_RECORD_BYTES`: a longer line or text is refused (`record_too_large`) with an excerpt and
read past. Files are decoded by the rules of `encoding.py` (BOM, UTF-8, detection) and a binary
file is refused whole (`binary_file`). A CSV row broken by an unclosed quote costs that row
only: the lines it swallowed are read again as rows.
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import CsvSource, JsonlSource, ParquetSource, TextSource
from pipeline.ingest.files import (
    EXCERPT_CHARS,
    MAX_RECORD_BYTES,
    GzipBomb,
    Line,
    Overlong,
    TextLines,
    open_binary,
)

PARQUET_BATCH_ROWS = 100  # rows in memory at a time: a row may hold a long text

RAW_PREFIX_CHARS = EXCERPT_CHARS  # what of a refused record goes to the quarantine


@dataclass
class RawRecord:
    locator: str
    fields: dict[str, Any]
    invalid_utf8: bool = False
    raw: str | None = None  # an excerpt of the record as read, for the quarantine


@dataclass
class ReadProblem:
    reason: str
    locator: str
    detail: str
    raw: str | None = None


ReadItem = RawRecord | ReadProblem


@dataclass(frozen=True)
class ByteSpan:
    """Part of an uncompressed line file: bytes [start, end), whose first line is `first_line`."""

    start: int
    end: int
    first_line: int


def _overlong_problem(locator: str, line: Overlong, what: str = "line") -> ReadProblem:
    return ReadProblem(
        "record_too_large",
        locator,
        f"a {what} of {line.size:,} bytes (over {MAX_RECORD_BYTES:,}); it was read past",
        str(line),
    )


def _binary_problem(name: str, lines: TextLines) -> ReadProblem | None:
    if lines.binary:
        return ReadProblem("binary_file", name, f"not text: {lines.binary}")
    return None


def read_jsonl(
    source: JsonlSource, file: Path, name: str, span: ByteSpan | None = None
) -> Iterator[ReadItem]:
    """One record per non-blank line; each line must be a JSON object."""
    with open_binary(file) as handle:
        lines = TextLines(handle, span.first_line if span else 1, span)
        if (problem := _binary_problem(name, lines)) is not None:
            if span is None or span.start == 0:
                yield problem
            return
        for item in lines:
            line = item.text
            locator = f"{name}:{item.number}"
            if isinstance(line, Overlong):
                yield _overlong_problem(locator, line)
                continue
            if not line.strip():
                continue
            raw = line[:RAW_PREFIX_CHARS]
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as exc:
                detail = f"not valid JSON: {str(exc)[:300]}"
                if isinstance(exc, RecursionError):
                    detail = "not valid JSON: nested too deeply"
                if item.invalid:
                    detail += " (the line also held invalid UTF-8)"
                yield ReadProblem("malformed_json", locator, detail, raw)
                continue
            if not isinstance(record, dict):
                yield ReadProblem(
                    "malformed_json",
                    locator,
                    f"expected a JSON object, got {type(record).__name__}",
                    raw,
                )
                continue
            yield RawRecord(locator, record, item.invalid, raw)


@contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    # The csv module refuses fields over 128 KiB by default; a long article is larger.
    # The limit is process-wide, so restore it when done.
    previous = csv.field_size_limit()
    csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


class _RowLines:
    """Lines for csv.reader that remember which ones the current row took, so that a row that
    breaks (an unclosed quote) can give back all but its first line to be read again."""

    def __init__(self, lines: Iterator[Line]):
        self._lines = lines
        self._pushed: list[Line] = []
        self.taken: list[Line] = []
        self.overlong: Line | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = self._pushed.pop() if self._pushed else next(self._lines)
        if isinstance(line.text, Overlong):
            self.overlong = line
            raise csv.Error("the line is over the record limit")
        self.taken.append(line)
        return line.text

    def give_back(self, lines: list[Line]) -> None:
        self._pushed.extend(reversed(lines))

    def row_done(self) -> list[Line]:
        taken, self.taken = self.taken, []
        return taken


def read_csv(source: CsvSource, file: Path, name: str) -> Iterator[ReadItem]:
    """One record per row after the header row; locators count data rows from 1.

    A row that the csv module cannot read (an unclosed quote runs to the next quote or the end
    of the file, a field over the record limit) is refused with its first line only, and the
    lines after it are read again as rows of their own: one bad quote costs one row.
    """
    with _csv_field_limit(MAX_RECORD_BYTES), open_binary(file) as handle:
        lines = TextLines(handle)
        if (problem := _binary_problem(name, lines)) is not None:
            yield problem
            return
        feed = _RowLines(iter(lines))
        header: list[str] | None = None
        row_number = 0

        def new_reader() -> Any:
            return csv.reader(feed, delimiter=source.delimiter, strict=True)

        reader = new_reader()
        while True:
            error = None
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                row, error = None, str(exc)
            taken = feed.row_done()
            if error is not None:
                row_number += 1
                locator = f"{name}#{row_number}"
                overlong, feed.overlong = feed.overlong, None
                if overlong is not None:
                    yield _overlong_problem(locator, overlong.text, "CSV line")  # type: ignore[arg-type]
                else:
                    # The first line is refused; the lines the broken row swallowed are read
                    # again as rows of their own.
                    feed.give_back(taken[1:])
                    detail = f"csv: {error}"
                    if len(taken) > 1:
                        detail += f" (its quoted field ran over {len(taken)} lines)"
                    first = taken[0].text if taken else ""
                    yield ReadProblem(
                        "malformed_csv_row", locator, detail, first[:RAW_PREFIX_CHARS]
                    )
                reader = new_reader()
                continue
            assert row is not None
            if header is None:
                header = row
                continue
            if not row:  # a blank line is no row
                continue
            row_number += 1
            locator = f"{name}#{row_number}"
            raw = source.delimiter.join(row)[:RAW_PREFIX_CHARS]
            if len(row) != len(header):
                yield ReadProblem(
                    "malformed_csv_row",
                    locator,
                    f"{len(row)} fields where the header has {len(header)}",
                    raw,
                )
                continue
            yield RawRecord(
                locator,
                dict(zip(header, row, strict=True)),
                any(line.invalid for line in taken),
                raw,
            )


def read_parquet(source: ParquetSource, file: Path, name: str) -> Iterator[ReadItem]:
    """One record per row, read batch by batch; locators count rows from 0. A row whose text
    is over the record limit is refused."""
    row_number = 0
    for batch in pq.ParquetFile(file).iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for record in batch.to_pylist():
            locator = f"{name}#{row_number}"
            row_number += 1
            text = record.get(source.text_field)
            if isinstance(text, (str, bytes)) and len(text) > MAX_RECORD_BYTES:
                yield ReadProblem(
                    "record_too_large",
                    locator,
                    f"a text of {len(text):,} characters (over {MAX_RECORD_BYTES:,})",
                    str(text[:RAW_PREFIX_CHARS]),
                )
                continue
            yield RawRecord(locator, record)


def read_text(source: TextSource, file: Path, name: str) -> Iterator[ReadItem]:
    """The whole file as one record, or one record per blank-line-separated block; a record
    over the record limit is refused (with an excerpt), not held in memory."""
    with open_binary(file) as handle:
        lines = TextLines(handle)
        if (problem := _binary_problem(name, lines)) is not None:
            yield problem
            return
        if source.split == "file":
            text = _TextBlock()
            for item in lines:
                text.add(item)
            if text.lines:
                yield text.record(source, name, name, keep_endings=True)
            return
        block = _TextBlock()
        for item in lines:
            if isinstance(item.text, Overlong) or item.text.strip():
                if not block.lines:
                    block.start = item.number
                block.add(item)
            elif block.lines:
                yield block.record(source, name, f"{name}:{block.start}")
                block = _TextBlock()
        if block.lines:
            yield block.record(source, name, f"{name}:{block.start}")


class _TextBlock:
    """The lines of a text record so far; past the record limit only its size is counted."""

    def __init__(self) -> None:
        self.start = 0
        self.parts: list[str] | None = []
        self.lines = 0
        self.size = 0
        self.excerpt = ""
        self.invalid = False

    def add(self, item: Line) -> None:
        text = item.text
        self.lines += 1
        self.invalid |= item.invalid
        self.size += text.size if isinstance(text, Overlong) else len(text)
        if not self.excerpt:
            self.excerpt = str(text)[:RAW_PREFIX_CHARS]
        if self.parts is not None:
            if isinstance(text, Overlong) or self.size > MAX_RECORD_BYTES:
                self.parts = None  # too large: counted, not kept
            else:
                self.parts.append(text)

    def record(
        self, source: TextSource, name: str, locator: str, keep_endings: bool = False
    ) -> ReadItem:
        if self.parts is None:
            return ReadProblem(
                "record_too_large",
                locator,
                f"a text of {self.size:,} characters (over {MAX_RECORD_BYTES:,}); it was read past",
                self.excerpt,
            )
        if keep_endings:
            text = "".join(self.parts)
        else:
            text = "\n".join(part.rstrip("\r\n") for part in self.parts)
        return RawRecord(locator, {source.text_field: text}, self.invalid)


def read_source_file(
    items: Iterator[ReadItem], name: str, span: ByteSpan | None = None
) -> Iterator[ReadItem]:
    """A reader's items (for the file `name`, or its `span`), with file-level failures turned into problems instead of exceptions.

    What was read before a failure (e.g. the lines before a gzip is cut short) is kept; the
    problem's locator says where reading stopped. A file that yields nothing is reported too
    (a span of a split file that holds only blank lines is not).
    """
    last_locator = None
    produced = 0
    try:
        for item in items:
            produced += 1
            last_locator = item.locator
            yield item
    except EOFError as exc:  # gzip stream cut short
        yield ReadProblem("truncated_gzip", _after(name, last_locator), str(exc))
        return
    except (gzip.BadGzipFile, zlib.error) as exc:
        yield ReadProblem("corrupt_gzip", _after(name, last_locator), str(exc))
        return
    except GzipBomb as exc:
        yield ReadProblem("gzip_bomb", _after(name, last_locator), exc.strerror or str(exc))
        return
    except pa.ArrowException as exc:
        yield ReadProblem("unreadable_file", _after(name, last_locator), f"parquet: {exc}")
        return
    except OSError as exc:
        yield ReadProblem("unreadable_file", _after(name, last_locator), str(exc))
        return
    if produced == 0 and (span is None or span.start == 0):
        yield ReadProblem("empty_file", name, "the file holds no records")


def _after(name: str, last_locator: str | None) -> str:
    return name if last_locator is None else f"{name} after {last_locator}"
