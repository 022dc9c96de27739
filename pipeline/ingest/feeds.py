"""Feed files parsed into items: the bytes of an RSS / Atom / RDF / JSON Feed file in, `FeedItem`s
out (with what was wrong with the file, if anything).

`parse_feed(data, name)` runs in the extraction worker process (sandbox.py), under its hard time
limit: feedparser reads broken XML leniently but slowly (100,000 nested elements: seconds), and
a JSON Feed nested deeper than Python's recursion limit raises RecursionError, which is a
`malformed_feed` like any invalid JSON. Only the standard library and feedparser are imported,
so the worker stays small.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any


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


@dataclass
class FeedResult:
    items: list[FeedItem]
    problem: tuple[str, str] | None = None  # (reason, detail): the feed gave nothing
    note: RepairNote | None = None  # broken XML that the lenient parser still read
    bad_items: list[tuple[str, str]] = field(default_factory=list)  # (locator, why)


def _struct_to_iso(value: Any) -> str | None:
    if not value:
        return None
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str | None:
    """A field of a JSON Feed item as a string (a number or a list of them is rendered)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float, bool)):
        return str(value)
    return None


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def parse_json_feed(data: bytes, name: str) -> FeedResult:
    try:
        feed = json.loads(data.decode("utf-8-sig", errors="replace"))
    except RecursionError:
        return FeedResult([], ("malformed_feed", "not valid JSON: nested too deeply"))
    except ValueError as exc:
        return FeedResult([], ("malformed_feed", f"not valid JSON: {str(exc)[:300]}"))
    if not isinstance(feed, dict) or not isinstance(feed.get("items"), list):
        return FeedResult([], ("malformed_feed", "a JSON Feed needs an `items` list"))
    items = []
    bad_items = []
    for number, item in enumerate(feed["items"]):
        if not isinstance(item, dict):
            bad_items.append((f"{name}#{number}", f"an item that is a {type(item).__name__}"))
            continue
        authors = item.get("authors")
        if not isinstance(authors, list):
            authors = [item["author"]] if isinstance(item.get("author"), dict) else []
        author = ", ".join(_text(a.get("name")) or "" for a in authors if isinstance(a, dict))
        content = _text(item.get("content_html"))
        if not content and _text(item.get("content_text")):
            content = _escape(_text(item["content_text"]) or "")
        items.append(
            FeedItem(
                f"{name}#{number}",
                title=_text(item.get("title")),
                link=_text(item.get("url")) or _text(item.get("external_url")),
                published=_text(item.get("date_published")) or _text(item.get("date_modified")),
                author=author or None,
                content_html=content or None,
                summary_html=_text(item.get("summary")),
                meta={"feed_title": _text(feed.get("title")), "item_id": _text(item.get("id"))},
            )
        )
    return FeedResult(items, bad_items=bad_items)


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


def parse_feed(data: bytes, name: str) -> FeedResult:
    """The items of one feed file (JSON Feed or XML)."""
    if data.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] == b"{":
        return parse_json_feed(data, name)
    import feedparser

    try:
        parsed = feedparser.parse(data.lstrip())
    except RecursionError:
        return FeedResult([], ("malformed_feed", "the XML is nested too deeply"))
    items = [_feed_item(name, n, e, parsed) for n, e in enumerate(parsed.entries)]
    note = None
    if parsed.bozo:
        error = parsed.get("bozo_exception")
        detail = f"{type(error).__name__}: {str(error)[:300]}"
        if not items:
            return FeedResult([], ("malformed_feed", detail))
        note = RepairNote(
            "malformed_feed_recovered",
            name,
            f"{detail}; {len(items)} items recovered by the lenient parser",
        )
    return FeedResult(items, None, note)
