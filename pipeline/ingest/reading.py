"""Reading one unit of ingest into documents: a unit's records or pages in, documents written
to the unit's shard writer and refusals to its quarantine out.

`UnitTask` is one unit with what reading it needs; `UnitSink` takes each document (NUL
characters and lone surrogates repaired, language identified, counted) or refusal. The three
ways of reading are here: records (`read_records`: a source kind's `ReadItem`s, each record
made a document by `record_to_document`), pages (`read_pages`: WARC responses, HTML files)
and feeds (`read_feeds`: items, joined with their page when the source's `pages` has it). The
source kinds (kinds.py) say which one a source type uses.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import IngestConfig
from pipeline.documents import ShardWriter, document_id, make_document
from pipeline.ingest.files import EXCERPT_CHARS
from pipeline.ingest.readers import RawRecord, ReadItem, ReadProblem
from pipeline.ingest.units import Unit
from pipeline.quarantine import Quarantine

# Quarantine entries that note a repair of a kept document rather than a refusal.
REPAIR_REASONS = frozenset(
    {"invalid_utf8", "undecodable_bytes", "malformed_feed_recovered", "invalid_characters"}
)
MAX_RECORD_DEPTH = 64  # a record nested deeper is refused (later stages parse its meta)
_SURROGATE = re.compile("[\ud800-\udfff]")
MAPPABLE_COLUMNS = ("id", "url", "title", "published", "lang")
EXAMPLE_CHARS = 300


def source_name(source: Any) -> str:
    """The label a source goes by in counts and in the `source` column."""
    return source.name or f"{source.type}:{source.path}"


def _as_column_value(value: Any) -> str | None:
    """A mapped record field as a document column: strings kept, others rendered."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def record_to_document(
    source: Any, name: str, record: RawRecord
) -> tuple[dict[str, Any] | None, ReadProblem | None]:
    """A document from a record, or the problem that keeps it from being one."""
    fields = record.fields
    if _too_deep(fields, MAX_RECORD_DEPTH):
        return None, ReadProblem(
            "too_deeply_nested",
            record.locator,
            f"the record nests deeper than {MAX_RECORD_DEPTH} levels",
            record.raw,
        )
    text = fields.get(source.text_field)
    if text is None:
        present = ", ".join(sorted(map(str, fields))[:20])
        return None, ReadProblem(
            "missing_text",
            record.locator,
            f"no {source.text_field!r} field (fields: {present})",
            record.raw,
        )
    if not isinstance(text, str):
        return None, ReadProblem(
            "non_string_text",
            record.locator,
            f"{source.text_field!r} is a {type(text).__name__}, not a string",
            record.raw,
        )
    if not text.strip():
        return None, ReadProblem("empty_text", record.locator, "the text is empty", record.raw)

    columns = {
        column: _as_column_value(fields.get(field)) for column, field in source.fields.items()
    }
    url = columns.get("url") or None
    user_id = columns.get("id")
    if user_id:
        # A record's own id, namespaced by source type and name so two sources that both
        # number their records 0, 1, 2 ... never collide.
        doc_id = document_id(source.type, f"{name}|id={user_id}", url)
    else:
        doc_id = document_id(source.type, record.locator, url)

    used = {source.text_field, *source.fields.values()}
    meta = {key: value for key, value in fields.items() if key not in used}
    meta["_locator"] = record.locator  # where it came from, to find the raw record again
    if record.invalid_utf8:
        meta["_invalid_utf8"] = True
    doc = make_document(
        id=doc_id,
        text=text,
        source=name,
        url=url,
        title=columns.get("title"),
        published=columns.get("published"),
        lang=columns.get("lang"),
        meta=meta,
    )
    return doc, None


def _too_deep(value: Any, limit: int) -> bool:
    """Whether dicts and lists nest more than `limit` levels (an iterative walk)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))
    return False


def _record_for_quarantine(item: RawRecord | ReadProblem) -> Any:
    """A bounded excerpt of a refused record, never the whole of it."""
    if item.raw is not None:
        return item.raw[:EXCERPT_CHARS]
    if isinstance(item, RawRecord):
        # Parquet and text records have no raw line: an excerpt of its text field.
        text = json.dumps(item.fields, ensure_ascii=False, default=str)[:EXCERPT_CHARS]
        return text
    return None


def _valid_text(value: str) -> tuple[str, int, int]:
    """A string without NUL characters and lone surrogates (which Parquet cannot store): the
    text, the NULs removed, the surrogates replaced by U+FFFD."""
    if value.isascii() and "\x00" not in value:
        return value, 0, 0
    nuls = value.count("\x00")
    if nuls:
        value = value.replace("\x00", "")
    value, surrogates = _SURROGATE.subn("\ufffd", value)
    return value, nuls, surrogates


# ------------------------------------------------------------------------------ one unit


@dataclass(frozen=True)
class UnitTask:
    number: int
    unit: Unit
    source: Any
    base_dir: str
    out_dir: str  # this unit's own folder
    settings: IngestConfig
    page_index: str | None = None  # a PageIndex JSON file, for feeds with `pages`


class UnitSink:
    """Where one unit's documents, refusals and repairs go, and its counts."""

    def __init__(self, task: UnitTask, writer: ShardWriter, quarantine: Quarantine):
        from pipeline.ingest.langid import LanguageIdentifier

        self.task = task
        self.name = source_name(task.source)
        self.writer = writer
        self.quarantine = quarantine
        self.langid = LanguageIdentifier(task.settings.langid)
        self.counts: Counter[str] = Counter()
        self.languages: Counter[str] = Counter()
        self.extractors: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.missing_mapped: Counter[str] = Counter()
        self.chars = 0
        self.example: dict[str, Any] | None = None

    def refuse(self, problem: ReadProblem, record: Any = None) -> None:
        record = record if record is not None else problem.raw
        if isinstance(record, str):
            record = record[:EXCERPT_CHARS]
        self.quarantine.add(
            problem.reason,
            source=self.name,
            locator=problem.locator,
            detail=problem.detail,
            record=record,
        )
        self.counts["quarantined"] += 1

    def repair(self, reason: str, locator: str, detail: str, record: Any = None) -> None:
        self.quarantine.add(reason, source=self.name, locator=locator, detail=detail, record=record)
        self.counts[f"repaired:{reason}"] += 1

    def accept(self, doc: dict[str, Any]) -> None:
        nuls = surrogates = 0
        for column in ("text", "url", "title", "published", "lang", "meta"):
            if isinstance(doc[column], str):
                doc[column], n, m = _valid_text(doc[column])
                nuls, surrogates = nuls + n, surrogates + m
        if nuls or surrogates:
            meta = json.loads(doc["meta"])
            self.repair(
                "invalid_characters",
                meta.get("_locator", ""),
                f"{nuls} NUL characters removed, {surrogates} lone surrogates replaced by "
                f"U+FFFD; kept as document {doc['id']}",
            )
        if not doc["text"].strip():
            meta = json.loads(doc["meta"])
            problem = ReadProblem("empty_text", meta.get("_locator", ""), "no text is left")
            self.refuse(problem)
            return
        if doc["lang"] is None and self.langid.enabled:
            lang, score = self.langid.identify(doc["text"])
            if lang is not None:
                doc["lang"] = lang
                meta = json.loads(doc["meta"])
                meta["lang_score"] = score
                doc["meta"] = json.dumps(meta, ensure_ascii=False, default=str)
        self.languages[doc["lang"] or "unknown"] += 1
        self.writer.write(doc)
        self.counts["documents"] += 1
        self.chars += len(doc["text"])
        if self.example is None:
            self.example = {
                "id": doc["id"],
                "source": self.name,
                "lang": doc["lang"],
                "title": doc["title"],
                "url": doc["url"],
                "text": doc["text"][:EXAMPLE_CHARS],
            }

    def result(self) -> dict[str, Any]:
        return {
            "number": self.task.number,
            "source": self.name,
            "counts": dict(self.counts),
            "languages": dict(self.languages),
            "extractors": dict(self.extractors),
            "skipped_records": dict(self.skipped),
            "missing_mapped": dict(self.missing_mapped),
            "files": len(self.task.unit.files),
            "chars": self.chars,
            "example": self.example,
            "problem_only": self.task.unit.problem is not None,
        }


def read_records(task: UnitTask, sink: UnitSink, items: Iterable[ReadItem]) -> None:
    """A record source's items (records and problems) -> documents and refusals."""
    source = task.source
    for item in items:
        if isinstance(item, ReadProblem):
            sink.refuse(item)
            continue
        doc, problem = record_to_document(source, sink.name, item)
        if problem is not None:
            sink.refuse(problem, _record_for_quarantine(item))
            continue
        if item.invalid_utf8:
            sink.repair(
                "invalid_utf8",
                item.locator,
                f"invalid bytes replaced by U+FFFD; kept as document {doc['id']}",
                _record_for_quarantine(item),
            )
        sink.missing_mapped.update(
            c for c, f in source.fields.items() if item.fields.get(f) is None
        )
        sink.accept(doc)


def page_document(
    sink: UnitSink, worker: Any, page: Any, url: str | None, extra: dict[str, Any]
) -> dict[str, Any] | None:
    """Extract one page into a document, in the extraction worker (sandbox.py); refuse it (and
    return None) when it has no text, is refused, or takes too long."""
    from pipeline.ingest.html import ExtractionFailed

    try:
        extracted = worker.call("extract", page.data, page.charset)
    except ExtractionFailed as exc:
        excerpt = None
        if exc.reason != "binary_file":
            excerpt = page.data[: EXCERPT_CHARS * 2].decode("utf-8", "replace")[:EXCERPT_CHARS]
        sink.refuse(ReadProblem(exc.reason, page.locator, exc.detail), excerpt)
        return None
    sink.extractors[extracted.extractor] += 1
    url = url or extracted.canonical_url
    meta = {
        "_locator": page.locator,
        "extractor": extracted.extractor,
        "author": extracted.author,
        "lang_hint": extracted.lang_hint,
        "encoding": extracted.encoding,
        **page.meta,
        **extra,
    }
    doc_id = document_id(sink.task.source.type, page.locator, url)
    if extracted.replaced_bytes:
        meta["_undecodable_bytes"] = True
        sink.repair(
            "undecodable_bytes",
            page.locator,
            f"bytes invalid in {extracted.encoding} replaced by U+FFFD; kept as document {doc_id}",
        )
    return make_document(
        id=doc_id,
        text=extracted.text,
        source=sink.name,
        url=url,
        title=extracted.title,
        published=extracted.published,
        meta={k: v for k, v in meta.items() if v is not None},
    )


def read_pages(task: UnitTask, sink: UnitSink, pages: Iterable[Any]) -> None:
    """Pages (web.Page) and problems -> extracted documents and refusals."""
    from pipeline.ingest.sandbox import worker_for
    from pipeline.ingest.web import Page

    worker = worker_for(task.settings.extraction)
    for page in pages:
        if isinstance(page, ReadProblem):
            sink.refuse(page)
            continue
        assert isinstance(page, Page)
        doc = page_document(sink, worker, page, page.url, {})
        if doc is not None:
            sink.accept(doc)


def read_feeds(task: UnitTask, sink: UnitSink) -> None:
    """Feed files: items -> documents; an item with only a summary is joined with its page when the
    source's `pages` has it. Feeds are parsed, and item HTML turned into text, in the
    extraction worker (sandbox.py)."""
    from pipeline.ingest.html import ExtractionFailed
    from pipeline.ingest.sandbox import worker_for
    from pipeline.ingest.web import FeedItem, PageIndex, RepairNote, iter_feed_items

    settings = task.settings.extraction
    worker = worker_for(settings)
    index = PageIndex.from_json(Path(task.page_index)) if task.page_index else None
    for item in iter_feed_items(list(task.unit.files), settings.max_page_bytes, worker):
        if isinstance(item, ReadProblem):
            sink.refuse(item)
            continue
        if isinstance(item, RepairNote):
            sink.repair(item.reason, item.locator, item.detail)
            continue
        assert isinstance(item, FeedItem)
        try:
            content, summary, title = worker.call(
                "fragments", [item.content_html, item.summary_html, item.title]
            )
        except ExtractionFailed as exc:
            sink.refuse(
                ReadProblem(exc.reason, item.locator, exc.detail),
                {"title": (item.title or "")[:EXCERPT_CHARS], "link": (item.link or "")[:500]},
            )
            continue
        meta: dict[str, Any] = {"_locator": item.locator, **item.meta, "author": item.author}
        doc_id = document_id("feed", item.locator, item.link)
        text = content
        if text:
            meta["text_from"] = "content"
        else:
            page = index.fetch(item.link, settings.max_page_bytes) if index and item.link else None
            if page is not None:
                joined = page_document(sink, worker, page, item.link, {})
                if joined is not None:
                    text = joined["text"]
                    meta.update(text_from="page", page_locator=page.locator, summary=summary)
            if not text:
                text = summary
                meta["text_from"] = "summary"
        if not text:
            problem = ReadProblem("empty_text", item.locator, "the item has no text")
            sink.refuse(
                problem,
                {"title": (item.title or "")[:EXCERPT_CHARS], "link": (item.link or "")[:500]},
            )
            continue
        sink.accept(
            make_document(
                id=doc_id,
                text=text,
                source=sink.name,
                url=item.link,
                title=title or None,
                published=item.published,
                meta={k: v for k, v in meta.items() if v is not None},
            )
        )
