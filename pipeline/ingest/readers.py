"""Record readers, one per source type: a file in, a stream of records and problems out.

In: one file of a source (JSONL, CSV, Parquet or text; `.gz` for the line-based ones) and its
display name. Out: `RawRecord`s (a locator such as `name:12` or `name#3`, the record's fields,
whether invalid UTF-8 was replaced) interleaved with `ReadProblem`s for what could not be read
(a malformed JSON line, a CSV row of the wrong width, a truncated gzip, ...). Readers stream:
at most one record, or one text paragraph, is held at a time.
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import CsvSource, JsonlSource, ParquetSource, TextSource
from pipeline.ingest.files import decoded_lines, open_binary

RAW_PREFIX_CHARS = 2000  # what of a refused record goes to the quarantine


@dataclass
class RawRecord:
    locator: str
    fields: dict[str, Any]
    invalid_utf8: bool = False
    raw: str | None = None  # the record as read, for the quarantine when it is refused


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


def _span_lines(handle: Any, span: ByteSpan) -> Iterator[bytes]:
    handle.seek(span.start)
    position = span.start
    while position < span.end:
        line = handle.readline()
        if not line:
            return
        position += len(line)
        yield line


def read_jsonl(
    source: JsonlSource, file: Path, name: str, span: ByteSpan | None = None
) -> Iterator[ReadItem]:
    """One record per non-blank line; each line must be a JSON object."""
    with open_binary(file) as handle:
        if span is None:
            lines = decoded_lines(handle)
        else:
            lines = decoded_lines(_span_lines(handle, span), span.first_line)
        for number, line, invalid_utf8 in lines:
            if not line.strip():
                continue
            locator = f"{name}:{number}"
            raw = line[:RAW_PREFIX_CHARS]
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as exc:
                detail = f"not valid JSON: {exc}"
                if invalid_utf8:
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
            yield RawRecord(locator, record, invalid_utf8, raw)


@contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    # The csv module refuses fields over 128 KiB by default; a long article is larger.
    # The limit is process-wide, so restore it when done.
    previous = csv.field_size_limit()
    csv.field_size_limit(max(previous, limit))
    try:
        yield
    finally:
        csv.field_size_limit(previous)


class _LineFeed:
    """Decoded lines for csv.reader, counting the ones that held invalid UTF-8."""

    def __init__(self, handle: Any):
        self._lines = decoded_lines(handle)
        self.invalid_lines = 0

    def __iter__(self) -> Iterator[str]:
        for _, line, invalid_utf8 in self._lines:
            self.invalid_lines += invalid_utf8
            yield line


def read_csv(source: CsvSource, file: Path, name: str) -> Iterator[ReadItem]:
    """One record per row after the header row; locators count data rows from 1."""
    with _csv_field_limit(min(sys.maxsize, 2**31 - 1)), open_binary(file) as handle:
        feed = _LineFeed(handle)
        reader = csv.reader(feed, delimiter=source.delimiter)
        header: list[str] | None = None
        row_number = 0
        while True:
            invalid_before = feed.invalid_lines
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                row_number += 1
                yield ReadProblem("malformed_csv_row", f"{name}#{row_number}", f"csv: {exc}")
                continue
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
                feed.invalid_lines > invalid_before,
                raw,
            )


def read_parquet(source: ParquetSource, file: Path, name: str) -> Iterator[ReadItem]:
    """One record per row, read batch by batch; locators count rows from 0."""
    row_number = 0
    for batch in pq.ParquetFile(file).iter_batches(batch_size=1000):
        for record in batch.to_pylist():
            yield RawRecord(f"{name}#{row_number}", record)
            row_number += 1


def read_text(source: TextSource, file: Path, name: str) -> Iterator[ReadItem]:
    """The whole file as one record, or one record per blank-line-separated block."""
    with open_binary(file) as handle:
        if source.split == "file":
            lines, invalid_utf8 = [], False
            for _, line, bad in decoded_lines(handle):
                lines.append(line)
                invalid_utf8 |= bad
            if lines:
                yield RawRecord(name, {source.text_field: "".join(lines)}, invalid_utf8)
            return
        block: list[str] = []
        start, invalid_utf8 = 0, False
        for number, line, bad in decoded_lines(handle):
            if line.strip():
                if not block:
                    start, invalid_utf8 = number, False
                block.append(line.rstrip("\r\n"))
                invalid_utf8 |= bad
            elif block:
                yield RawRecord(
                    f"{name}:{start}", {source.text_field: "\n".join(block)}, invalid_utf8
                )
                block = []
        if block:
            yield RawRecord(f"{name}:{start}", {source.text_field: "\n".join(block)}, invalid_utf8)


READERS: dict[str, Callable[[Any, Path, str], Iterator[ReadItem]]] = {
    "jsonl": read_jsonl,
    "csv": read_csv,
    "parquet": read_parquet,
    "text": read_text,
}


def read_source_file(
    source: Any, file: Path, name: str, span: ByteSpan | None = None
) -> Iterator[ReadItem]:
    """A reader's items, with file-level failures turned into problems instead of exceptions.

    What was read before a failure (e.g. the lines before a gzip is cut short) is kept; the
    problem's locator says where reading stopped. A file that yields nothing is reported too
    (a span of a split file that holds only blank lines is not).
    """
    last_locator = None
    produced = 0
    reader = READERS[source.type]
    items = reader(source, file, name) if span is None else reader(source, file, name, span)
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
