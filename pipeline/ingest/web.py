"""Web readers: WARC/ARC files, saved HTML pages and RSS/Atom/JSON feeds in, pages and feed
items out (not yet documents: see stage.py, which extracts and identifies the language).

- `iter_warc_pages`: `response` records with an HTML content type and a 2xx status, read with
  warcio (ARC converted on the fly, chunked and compressed HTTP bodies decoded), each with its
  target URL, WARC-Date, HTTP charset and byte offset (the locator is `file@offset`). Other
  records are counted as skipped, not refused. A record that cannot be read is a problem; a file
  that breaks off (a truncated gzip, a corrupt header) stops there with what was read kept.
- `iter_html_pages`: one page per file; its URL from the source's `urls` file or the page's
  canonical link.
- `iter_feed_items`: one item per RSS/Atom/RDF entry (feedparser, which recovers what it can
  from broken XML: the breakage is noted) or JSON Feed item; link, title, published date,
  author, and content (HTML) or summary.
- `PageIndex`: the URLs of the pages in a feed source's `pages` (HTML files or WARCs), so an
  item that has only a summary can be joined with its full page.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pipeline.ingest.files import (
    decoded_lines,
    file_name,
    match_source_files,
    open_binary,
    resolve_source_path,
)
from pipeline.ingest.html import charset_from_content_type
from pipeline.ingest.readers import ReadProblem

HTML_TYPES = ("text/html", "application/xhtml+xml")


@dataclass
class Page:
    locator: str
    data: bytes
    url: str | None = None
    charset: str | None = None  # from the HTTP Content-Type header
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class FeedItem:
    locator: str
    title: str | None
    link: str | None
    published: str | None
    author: str | None
    content_html: str | None  # the item's full content, when it has one
    summary_html: str | None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class RepairNote:
    """Something wrong that was worked around; what it affected is kept."""

    reason: str
    locator: str
    detail: str


def _read_capped(stream: Any, limit: int) -> bytes:
    return stream.read(limit + 1)


def _is_html(content_type: str | None, head: bytes) -> bool:
    if content_type:
        return content_type.split(";")[0].strip().lower() in HTML_TYPES
    sniff = head[:512].lstrip().lower()
    return sniff.startswith((b"<!doctype html", b"<html"))


# ------------------------------------------------------------------------------------ WARC


class _TruncatedInput(Exception):
    pass


class _NoQuietEOF:
    """A binary stream whose EOFError (a gzip cut short) surfaces as `_TruncatedInput`:
    warcio takes an EOFError for the regular end of the records and would stop quietly."""

    def __init__(self, stream: Any):
        self.stream = stream

    def read(self, size: int = -1) -> bytes:
        try:
            return self.stream.read(size)
        except EOFError as exc:
            raise _TruncatedInput(str(exc) or "the file ends early") from None

    def readline(self, size: int = -1) -> bytes:
        try:
            return self.stream.readline(size)
        except EOFError as exc:
            raise _TruncatedInput(str(exc) or "the file ends early") from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def iter_warc_pages(
    file: Any, name: str, max_bytes: int, skipped: Counter
) -> Iterator[Page | ReadProblem]:
    """HTML response pages of one WARC or ARC file (gzipped or not), in file order."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    last_offset: int | None = None
    # Python's gzip, not warcio's own decompression: it raises EOFError on a truncated file
    # where warcio would end quietly. Offsets are then positions in the uncompressed stream.
    with open_binary(file) as raw:
        iterator = ArchiveIterator(_NoQuietEOF(raw), arc2warc=True)
        try:
            for record in iterator:
                # The offset is asked for only after the body is read: warcio reads the
                # record to its end to answer, which would leave an empty body.
                if record.rec_type != "response":
                    skipped[f"record_type:{record.rec_type}"] += 1
                    continue
                http = record.http_headers
                if http is None:
                    skipped["no_http_headers"] += 1
                    continue
                status = http.get_statuscode() or ""
                if not status.startswith("2"):
                    skipped["http_status"] += 1
                    continue
                content_type = http.get_header("Content-Type")
                try:
                    data = _read_capped(record.content_stream(), max_bytes)
                    error = None
                except _TruncatedInput:
                    raise  # the file itself ends early: reported for the file below
                except Exception as exc:  # zlib, brotli, chunked-encoding errors of one body
                    error = exc
                last_offset = iterator.get_record_offset()
                locator = f"{name}@{last_offset}"
                if error is not None:
                    yield ReadProblem(
                        "corrupt_warc_record",
                        locator,
                        f"the HTTP body cannot be read: {type(error).__name__}: {error}",
                    )
                    continue
                if not _is_html(content_type, data):
                    skipped["not_html"] += 1
                    continue
                headers = record.rec_headers
                yield Page(
                    locator,
                    data,
                    url=(headers.get_header("WARC-Target-URI") or "").strip("<>") or None,
                    charset=charset_from_content_type(content_type),
                    meta={
                        "warc_date": headers.get_header("WARC-Date"),
                        # An ARC record converted on the fly gets a random id: leave it out.
                        "warc_record_id": headers.get_header("WARC-Record-ID")
                        if record.format == "warc"
                        else None,
                        "http_status": int(status[:3]) if status[:3].isdigit() else None,
                    },
                )
        except (EOFError, _TruncatedInput) as exc:
            yield ReadProblem("truncated_gzip", _after(name, last_offset), str(exc) or "EOF")
        except (gzip.BadGzipFile, zlib.error) as exc:
            yield ReadProblem("corrupt_gzip", _after(name, last_offset), str(exc))
        except ArchiveLoadFailed as exc:
            yield ReadProblem(
                "corrupt_warc_record", _after(name, last_offset), f"warcio: {exc}".strip()
            )
        except (ValueError, IndexError) as exc:  # warcio on a mangled header block
            yield ReadProblem(
                "corrupt_warc_record", _after(name, last_offset), f"{type(exc).__name__}: {exc}"
            )


def _after(name: str, offset: int | None) -> str:
    return name if offset is None else f"{name} after {name}@{offset}"


def read_warc_page_at(file: Any, offset: int, max_bytes: int) -> Page | None:
    """The response page whose record starts at `offset` (for feed joins)."""
    from warcio.archiveiterator import ArchiveIterator

    with open_binary(file) as raw:
        raw.seek(offset)
        for record in ArchiveIterator(raw, arc2warc=True):
            http = record.http_headers
            charset = charset_from_content_type(http.get_header("Content-Type") if http else None)
            data = _read_capped(record.content_stream(), max_bytes)
            return Page(f"{file}@{offset}", data, charset=charset)
    return None


# ------------------------------------------------------------------------------------ HTML


def load_url_map(source: Any, base_dir: str | Path) -> dict[str, str]:
    """file (relative to the source folder) -> URL, from the source's `urls` JSONL or CSV."""
    if not source.urls:
        return {}
    path = Path(resolve_source_path(source.urls, base_dir))
    mapping: dict[str, str] = {}
    with open_binary(path) as handle:
        if file_name(path).lower().removesuffix(".gz").endswith(".csv"):
            text = io.TextIOWrapper(handle, encoding="utf-8", errors="replace", newline="")
            for row in csv.DictReader(text):
                if row.get("file") and row.get("url"):
                    mapping[row["file"]] = row["url"]
        else:
            for _, line, _ in decoded_lines(handle):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except ValueError:
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


def _struct_to_iso(value: Any) -> str | None:
    if not value:
        return None
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", value)
    except (TypeError, ValueError):
        return None


def _parse_json_feed(data: bytes, name: str) -> tuple[list[FeedItem], ReadProblem | None]:
    try:
        feed = json.loads(data.decode("utf-8-sig", errors="replace"))
    except ValueError as exc:
        return [], ReadProblem("malformed_feed", name, f"not valid JSON: {exc}")
    if not isinstance(feed, dict) or not isinstance(feed.get("items"), list):
        return [], ReadProblem("malformed_feed", name, "a JSON Feed needs an `items` list")
    items = []
    for number, item in enumerate(feed["items"]):
        if not isinstance(item, dict):
            continue
        authors = item.get("authors") or ([item["author"]] if item.get("author") else [])
        author = ", ".join(a.get("name", "") for a in authors if isinstance(a, dict)) or None
        content = item.get("content_html") or (
            _escape(item["content_text"]) if item.get("content_text") else None
        )
        items.append(
            FeedItem(
                f"{name}#{number}",
                title=item.get("title"),
                link=item.get("url") or item.get("external_url"),
                published=item.get("date_published") or item.get("date_modified"),
                author=author,
                content_html=content,
                summary_html=item.get("summary"),
                meta={"feed_title": feed.get("title"), "item_id": item.get("id")},
            )
        )
    return items, None


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def iter_feed_items(
    files: list[tuple[str, Any]], max_bytes: int
) -> Iterator[FeedItem | ReadProblem | RepairNote]:
    import feedparser

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
        if data.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] == b"{":
            items, problem = _parse_json_feed(data, name)
            if problem:
                yield problem
                continue
        else:
            parsed = feedparser.parse(data.lstrip())
            items = [_feed_item(name, n, e, parsed) for n, e in enumerate(parsed.entries)]
            if parsed.bozo:
                error = parsed.get("bozo_exception")
                detail = f"{type(error).__name__}: {error}"
                if not items:
                    yield ReadProblem("malformed_feed", name, detail)
                    continue
                yield RepairNote(
                    "malformed_feed_recovered",
                    name,
                    f"{detail}; {len(items)} items recovered by the lenient parser",
                )
        if not items:
            yield ReadProblem("empty_feed", name, "the feed holds no items")
            continue
        yield from items


def _feed_item(name: str, number: int, entry: Any, parsed: Any) -> FeedItem:
    content = None
    for part in entry.get("content") or []:
        if part.get("value"):
            content = part["value"]
            break
    return FeedItem(
        f"{name}#{number}",
        title=entry.get("title"),
        link=entry.get("link"),
        published=_struct_to_iso(entry.get("published_parsed") or entry.get("updated_parsed"))
        or entry.get("published")
        or entry.get("updated"),
        author=entry.get("author"),
        content_html=content,
        summary_html=entry.get("summary"),
        meta={"feed_title": parsed.feed.get("title"), "item_id": entry.get("id")},
    )


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
    def build(cls, pages: str, base_dir: str | Path, max_bytes: int) -> PageIndex:
        from resiliparse.parse.html import HTMLTree

        from pipeline.ingest.html import decode_html, page_metadata

        entries: dict[str, list] = {}
        for kind in ("warc", "html"):
            matched = match_source_files(kind, pages, base_dir)
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
                    if isinstance(page, Page):
                        html, _, _ = decode_html(page.data)
                        url = page_metadata(HTMLTree.parse(html), html)["canonical_url"]
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
