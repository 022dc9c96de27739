"""Web readers: WARC/ARC files, saved HTML pages and RSS/Atom/JSON feeds in, pages and feed
items out (not yet documents: see stage.py, which extracts and identifies the language).

- `iter_warc_pages`: `response` records with an HTML content type and a 2xx status, read with
  warc.py (ARC read as WARC, chunked and compressed HTTP bodies decoded), each with its target
  URL, WARC-Date, HTTP charset and byte offset (the locator is `file@offset`). Other records are
  counted as skipped, not refused. A record that cannot be read is a problem and reading resumes
  at the next record; a corrupt gzip member costs the records in it (counted), not the file; a
  file that breaks off (a truncated gzip) stops there with what was read kept.
- `iter_html_pages`: one page per file (its first max_page_bytes + 1 bytes); its URL from the
  source's `urls` file or the page's canonical link.
- `iter_feed_items`: one item per RSS/Atom/RDF entry (feedparser, which recovers what it can
  from broken XML: the breakage is noted) or JSON Feed item (feeds.py); link, title, published
  date, author, and content (HTML) or summary. Parsed in the extraction worker (sandbox.py),
  under its hard time limit.
- `PageIndex`: the URLs of the pages in a feed source's `pages` (HTML files or WARCs), so an
  item that has only a summary can be joined with its full page.
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pipeline.ingest.encoding import charset_from_content_type, sniff_binary
from pipeline.ingest.feeds import FeedItem, RepairNote
from pipeline.ingest.files import (
    GzipBomb,
    GzipMembers,
    Overlong,
    TextLines,
    file_name,
    gzip_losses,
    match_source_files,
    open_binary,
    resolve_source_path,
)
from pipeline.ingest.readers import ReadProblem
from pipeline.ingest.warc import HttpError, WarcReader, WarcRecord, parse_http

HTML_TYPES = ("text/html", "application/xhtml+xml")


@dataclass
class Page:
    locator: str
    data: bytes
    url: str | None = None
    charset: str | None = None  # from the HTTP Content-Type header
    meta: dict[str, Any] = field(default_factory=dict)


def _read_capped(stream: Any, limit: int) -> bytes:
    return stream.read(limit + 1)


def _is_html(content_type: str | None, head: bytes) -> bool:
    if content_type:
        return content_type.split(";")[0].strip().lower() in HTML_TYPES
    sniff = head[:512].lstrip().lower()
    return sniff.startswith((b"<!doctype html", b"<html"))


# ------------------------------------------------------------------------------------ WARC


HTTP_ALLOWANCE = 1024 * 1024  # a WARC block holds the HTTP headers besides the page


def _loss_problems(handle: Any, name: str, reported: int, offset: int | None) -> list[ReadProblem]:
    """Corrupt gzip members a recovering reader passed over since the last `reported`."""
    problems = []
    for loss in gzip_losses(handle)[reported:]:
        where = (
            f"reading resumed at the next member (uncompressed byte {loss.resumed_at:,})"
            if loss.resumed_at is not None
            else "no gzip member after it"
        )
        problems.append(
            ReadProblem(
                "corrupt_gzip",
                _after(name, offset),
                f"a corrupt gzip member at byte {loss.offset:,} ({loss.error}); "
                f"{loss.skipped:,} compressed bytes skipped, {where}",
            )
        )
    return problems


def _page_of(
    record: WarcRecord, name: str, max_bytes: int, skipped: Counter
) -> Page | ReadProblem | None:
    """The HTML page of a response record, a problem, or None (counted in `skipped`)."""
    locator = f"{name}@{record.offset}"
    if record.rec_type != "response":
        skipped[f"record_type:{record.rec_type}"] += 1
        return None
    uri = record.target_uri or ""
    if record.length == 0 or not uri.lower().startswith(("http:", "https:")):
        skipped["no_http_headers"] += 1
        return None
    try:
        http = parse_http(record.block, record.complete, max_bytes)
    except HttpError as exc:
        return ReadProblem(
            "corrupt_warc_record", locator, f"the HTTP response cannot be read: {exc}"
        )
    if not http.status.startswith("2"):
        skipped["http_status"] += 1
        return None
    content_type = http.headers.get("content-type")
    if not _is_html(content_type, http.body):
        skipped["not_html"] += 1
        return None
    if not record.complete:
        return ReadProblem(
            "page_too_large", locator, f"a record of {record.length:,} bytes > max_page_bytes"
        )
    return Page(
        locator,
        http.body,
        url=uri or None,
        charset=charset_from_content_type(content_type),
        meta={
            "warc_date": record.headers.get("warc-date"),
            # An ARC record has no record id.
            "warc_record_id": record.headers.get("warc-record-id")
            if record.format == "warc"
            else None,
            "http_status": int(http.status[:3]) if http.status[:3].isdigit() else None,
        },
    )


def iter_warc_pages(
    file: Any, name: str, max_bytes: int, skipped: Counter
) -> Iterator[Page | ReadProblem]:
    """HTML response pages of one WARC or ARC file (gzipped or not), in file order.

    Read with `warc.WarcReader`: linear and bounded; a broken record is refused and reading
    resumes at the next record; a corrupt gzip member is passed over (and reported) with the
    records before and after it kept. Offsets are positions in the uncompressed stream.
    """
    last_offset: int | None = None
    reported = 0
    items = 0
    try:
        with open_binary(file, recover=True) as handle:
            reader = WarcReader(handle, name, max_bytes + HTTP_ALLOWANCE)
            for item in reader:
                items += 1
                losses = _loss_problems(handle, name, reported, last_offset)
                reported += len(losses)
                yield from losses
                if isinstance(item, ReadProblem):
                    yield item
                    continue
                last_offset = item.offset
                page = _page_of(item, name, max_bytes, skipped)
                if page is not None:
                    yield page
            losses = _loss_problems(handle, name, reported, last_offset)
            yield from losses
            if not items and not losses:
                yield ReadProblem("empty_file", name, "the file holds no records")
    except EOFError as exc:  # the gzip stream is cut short
        yield ReadProblem("truncated_gzip", _after(name, last_offset), str(exc) or "EOF")
    except GzipBomb as exc:
        yield ReadProblem("gzip_bomb", _after(name, last_offset), exc.strerror or str(exc))
    except (gzip.BadGzipFile, zlib.error) as exc:
        yield ReadProblem("corrupt_gzip", _after(name, last_offset), str(exc))
    except OSError as exc:
        yield ReadProblem(
            "unreadable_file", _after(name, last_offset), f"{type(exc).__name__}: {exc}"
        )


def _after(name: str, offset: int | None) -> str:
    return name if offset is None else f"{name} after {name}@{offset}"


def _skip_bytes(handle: Any, count: int) -> None:
    if not getattr(handle, "raw", None) or not isinstance(handle.raw, GzipMembers):
        handle.seek(count)
        return
    while count > 0:
        data = handle.read(min(count, 1 << 20))
        if not data:
            return
        count -= len(data)


def read_warc_page_at(file: Any, offset: int, max_bytes: int) -> Page | None:
    """The response page whose record starts at `offset` (for feed joins), or None."""
    try:
        with open_binary(file, recover=True) as handle:
            _skip_bytes(handle, offset)
            for item in WarcReader(handle, str(file), max_bytes + HTTP_ALLOWANCE):
                if isinstance(item, WarcRecord):
                    page = _page_of(item, str(file), max_bytes, Counter())
                    if isinstance(page, Page):
                        return Page(f"{file}@{offset}", page.data, charset=page.charset)
                return None
    except (EOFError, zlib.error, OSError):
        return None
    return None


# ------------------------------------------------------------------------------------ HTML


def load_url_map(source: Any, base_dir: str | Path) -> dict[str, str]:
    """file (relative to the source folder) -> URL, from the source's `urls` JSONL or CSV; a
    line that cannot be read is passed over."""
    if not source.urls:
        return {}
    path = Path(resolve_source_path(source.urls, base_dir))
    mapping: dict[str, str] = {}
    with open_binary(path) as handle:
        lines = (line.text for line in TextLines(handle) if not isinstance(line.text, Overlong))
        if file_name(path).lower().removesuffix(".gz").endswith(".csv"):
            try:
                for row in csv.DictReader(lines):
                    if row.get("file") and row.get("url"):
                        mapping[row["file"]] = row["url"]
            except csv.Error:
                pass  # the rows before the broken one are kept
        else:
            for line in lines:
                if line.strip():
                    try:
                        row = json.loads(line)
                    except (ValueError, RecursionError):
                        continue
                    if isinstance(row, dict) and row.get("file") and row.get("url"):
                        mapping[str(row["file"])] = str(row["url"])
    return mapping


def source_root(path: str, base_dir: str | Path) -> Path:
    """The folder that a source's file names in its `urls` file are relative to."""
    resolved = Path(resolve_source_path(path, base_dir))
    if resolved.is_dir():
        return resolved
    parts = []
    for part in resolved.parts:
        if any(ch in part for ch in "*?["):
            break
        parts.append(part)
    root = Path(*parts) if parts else Path(".")
    return root if root.is_dir() else root.parent


def _file_bytes(
    files: list[tuple[str, Any]], max_bytes: int
) -> Iterator[tuple[str, Any, bytes | ReadProblem]]:
    """(display name, file, its first max_bytes + 1 bytes, or why they could not be read)."""
    for name, file in files:
        data: bytes | ReadProblem
        try:
            with open_binary(file) as handle:
                data = _read_capped(handle, max_bytes)
        except EOFError as exc:
            data = ReadProblem("truncated_gzip", name, str(exc) or "EOF")
        except (gzip.BadGzipFile, zlib.error) as exc:
            data = ReadProblem("corrupt_gzip", name, str(exc))
        except OSError as exc:
            data = ReadProblem("unreadable_file", name, f"{type(exc).__name__}: {exc}")
        yield name, file, data


def iter_html_pages(
    files: list[tuple[str, Any]], max_bytes: int, urls: dict[str, str], root: Path | None
) -> Iterator[Page | ReadProblem]:
    for name, file, data in _file_bytes(files, max_bytes):
        if isinstance(data, ReadProblem):
            yield data
            continue
        if not data.strip():
            yield ReadProblem("empty_file", name, "the file holds no bytes")
            continue
        url = None
        if urls and root is not None and not isinstance(file, str):
            try:
                url = urls.get(Path(file).resolve().relative_to(root.resolve()).as_posix())
            except ValueError:
                url = None
        yield Page(name, data, url=url)


# ----------------------------------------------------------------------------------- feeds


def iter_feed_items(
    files: list[tuple[str, Any]], max_bytes: int, worker: Any
) -> Iterator[FeedItem | ReadProblem | RepairNote]:
    """The items of each feed file, parsed by the extraction worker (sandbox.py) under its hard
    time limit; a feed that cannot be parsed is one problem."""
    from pipeline.ingest.html import ExtractionFailed

    for name, _, data in _file_bytes(files, max_bytes):
        if isinstance(data, ReadProblem):
            yield data
            continue
        if len(data) > max_bytes:
            yield ReadProblem("page_too_large", name, f"the feed is over {max_bytes:,} bytes")
            continue
        if not data.strip():
            yield ReadProblem("empty_file", name, "the file holds no bytes")
            continue
        binary = sniff_binary(data)
        if binary:
            yield ReadProblem("binary_file", name, f"not text: {binary}")
            continue
        try:
            result = worker.call("feed", data, name)
        except ExtractionFailed as exc:
            yield ReadProblem(exc.reason, name, exc.detail)
            continue
        if result.problem:
            yield ReadProblem(result.problem[0], name, result.problem[1])
            continue
        if result.note:
            yield result.note
        for locator, detail in result.bad_items:
            yield ReadProblem("malformed_feed_item", locator, detail)
        if not result.items:
            yield ReadProblem("empty_feed", name, "the feed holds no items")
            continue
        yield from result.items


# ------------------------------------------------------------------------------ page index


def normalize_url(url: str) -> str:
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/") or "/"
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, parts.query, ""))


class PageIndex:
    """URL -> where the page is, over the HTML files and WARC files of a feed's `pages`."""

    def __init__(self, entries: dict[str, list]):
        self.entries = entries  # normalized URL -> ["warc", file, offset] | ["html", file]

    @classmethod
    def build(
        cls,
        pages: str,
        base_dir: str | Path,
        max_bytes: int,
        worker: Any,
        follow_links: bool = False,
    ) -> PageIndex:
        from pipeline.ingest.html import ExtractionFailed

        entries: dict[str, list] = {}
        for kind in ("warc", "html"):
            matched = match_source_files(kind, pages, base_dir, follow_links)
            for name, file in zip(matched.names, matched.files, strict=True):
                is_warc = file_name(file).lower().endswith((".warc", ".warc.gz", ".arc", ".arc.gz"))
                if (kind == "warc") != is_warc:
                    continue
                location = str(file)
                if is_warc:
                    for page in iter_warc_pages(file, name, max_bytes, Counter()):
                        if isinstance(page, Page) and page.url:
                            offset = int(page.locator.rsplit("@", 1)[1])
                            entries.setdefault(normalize_url(page.url), ["warc", location, offset])
                    continue
                for page in iter_html_pages([(name, file)], max_bytes, {}, None):
                    if isinstance(page, Page) and len(page.data) <= max_bytes:
                        try:
                            url = worker.call("canonical_url", page.data)
                        except ExtractionFailed:
                            continue  # a page the joins cannot use
                        if url:
                            entries.setdefault(normalize_url(url), ["html", location])
        return cls(entries)

    def to_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.entries, sort_keys=True), encoding="utf-8")

    @classmethod
    def from_json(cls, path: Path) -> PageIndex:
        return cls(json.loads(Path(path).read_text(encoding="utf-8")))

    def fetch(self, url: str, max_bytes: int) -> Page | None:
        where = self.entries.get(normalize_url(url))
        if where is None:
            return None
        if where[0] == "warc":
            return read_warc_page_at(where[1], int(where[2]), max_bytes)
        with open_binary(Path(where[1])) as handle:
            return Page(where[1], _read_capped(handle, max_bytes))
