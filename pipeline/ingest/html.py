"""HTML pages to main text: page bytes in, an `ExtractedPage` (text plus metadata) out.

Decoding never fails: the charset comes from the HTTP header, a BOM, the page's `<meta>`,
UTF-8 or detection, in that order; bytes no candidate decodes become U+FFFD and the page says so.

Extraction (`ExtractionConfig.extractor`):
- `trafilatura`: boilerplate, navigation and comments removed; `favor_precision` as web-corpus
  builders use it.
- `resiliparse`: its main-content heuristics (a C++ DOM), several times faster, with figures,
  captions, bylines, headers and navigation skipped.
- `fast-with-fallback` (default): resiliparse, then trafilatura for a page whose fast result
  looks wrong: fewer than `fallback_min_words` words, or mostly lines of a few words (menus,
  link lists). bench/ingest_extraction.py measures all three.

Title, author, publication date, canonical URL and the declared language come from the page's
`<head>` (OpenGraph, article:*, JSON-LD, `<time>`, `<html lang>`), read with resiliparse for every
extractor, so the columns do not depend on which extractor ran.

Untrusted pages: the ingest stage runs `HtmlExtractor` in a worker process (sandbox.py) whose
calls have a hard wall-clock limit (`timeout_seconds`: the worker is killed and replaced), since
a signal cannot interrupt the extractors' C code; in that process a SIGALRM `time_limit` ends
slow Python code sooner. Before parsing, cheap checks refuse what would take the parsers minutes
(`check_markup`: more than MAX_TAGS tags, markup nested deeper than MAX_NESTING) and bytes that
are no text (`binary_file`).
"""

from __future__ import annotations

import operator
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate, islice
from typing import TYPE_CHECKING, Any

from pipeline.ingest.encoding import (
    bom_codec,
    charset_from_content_type,  # noqa: F401  (imported from here by older callers)
    codec_name,
    legacy_codec,
    sniff_binary,
    wide_codec,
)

if TYPE_CHECKING:
    from pipeline.config import ExtractionConfig

# What the fast path leaves out besides resiliparse's own main-content rules: figures and
# their captions, page furniture, the headline (kept as the title column) and bylines.
FAST_SKIP_ELEMENTS = [
    "figure",
    "figcaption",
    "aside",
    "nav",
    "footer",
    "header",
    "h1",
    '[class*="caption"]',
    '[id*="caption"]',
    '[class*="byline"]',
    '[id*="byline"]',
]
SHORT_LINE_WORDS = 4
# Pages that cost the parsers minutes: resiliparse's main-content pass is quadratic in nesting
# depth (2,000 levels: 0.14 s; 10,000: 5 s; 100,000: over 10 min), trafilatura's fallback
# near-linear in tags but slow (1.2 million tags: 115 s, 1.6 GB). Real pages stay far below
# both (the deepest of the 216 benchmark pages: about 670 levels).
MAX_TAGS = 200_000
MAX_NESTING = 2_000
# Start and end tags that nest (void elements and ones whose end tag is implied left out).
_NESTING_TAG = re.compile(
    rb"<(/?)(?!(?:area|base|br|col|embed|hr|img|input|link|meta|param|source|track|wbr|p|li"
    rb"|dt|dd|tr|td|th|option|optgroup|thead|tbody|tfoot|colgroup|rp|rt|a|!|\?)\b)[a-z]",
    re.I,
)
_STEP = {b"": 1, b"/": -1}
NESTING_BLOCK = 16 * 1024

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_JSONLD_DATE = re.compile(r'"datePublished"\s*:\s*"([^"]{4,40})"')
_BLANK_RUNS = re.compile(r"\n{3,}")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


class ExtractionFailed(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class ExtractedPage:
    text: str
    extractor: str  # "resiliparse" | "trafilatura"
    title: str | None = None
    author: str | None = None
    published: str | None = None
    canonical_url: str | None = None
    lang_hint: str | None = None
    encoding: str = "utf-8"
    replaced_bytes: bool = False  # the bytes were not valid in any candidate charset


# -------------------------------------------------------------------------------- decoding


_codec = codec_name  # the name older callers use


def decode_html(data: bytes, declared: str | None = None) -> tuple[str, str, bool]:
    """(text, the codec used, whether undecodable bytes were replaced by U+FFFD)."""
    bom = bom_codec(data)
    if bom:
        codec = bom[0]
        return data[bom[1] :].decode(codec, errors="replace"), codec, False
    wide = wide_codec(data)
    if wide:
        return data.decode(wide, errors="replace"), wide, False
    candidates = [codec_name(declared)]
    meta = _META_CHARSET.search(data[:4096])
    if meta:
        candidates.append(codec_name(meta.group(1).decode("ascii", "replace")))
    candidates.append("utf-8")
    candidates.append(legacy_codec(data[:65536]))
    seen = []
    for codec in candidates:
        if codec and codec not in seen:
            seen.append(codec)
            try:
                return data.decode(codec), codec, False
            except (UnicodeDecodeError, LookupError):
                continue
    first = seen[0] if seen else "utf-8"
    return data.decode(first, errors="replace"), first, True


def nesting_depth(data: bytes) -> int:
    """How deep the markup nests, estimated from its tags (end tags that close nothing do not
    count against later start tags, as a parser ignores them)."""
    steps = list(accumulate(map(_STEP.__getitem__, _NESTING_TAG.findall(data))))
    if not steps:
        return 0
    floors = islice(accumulate(steps, min, initial=0), 1, None)
    return max(map(operator.sub, steps, floors))


def _may_nest_deeply(data: bytes) -> bool:
    """A bound on the nesting, from counts of start and end tags per block of the page (at the
    speed of bytes.count): False when the page cannot nest deeper than MAX_NESTING, as most
    pages cannot; True when `nesting_depth` has to look closer."""
    depth = 0
    for start in range(0, len(data), NESTING_BLOCK):
        end = start + NESTING_BLOCK
        closes = data.count(b"</", start, end)
        opens = data.count(b"<", start, end) - closes
        if depth + opens > MAX_NESTING:
            return True
        depth = max(0, depth + opens - closes)
    return False


def check_markup(data: bytes) -> None:
    """Refuse, before any parser sees it, a page that is binary or that would take the
    parsers minutes (ExtractionFailed). Cheap, not complete: the worker's hard time limit
    stops what gets past it."""
    binary = sniff_binary(data)
    if binary:
        raise ExtractionFailed("binary_file", f"not text: {binary}")
    tags = data.count(b"<")
    if tags > MAX_TAGS:
        raise ExtractionFailed("too_many_tags", f"{tags:,} tags (over {MAX_TAGS:,})")
    if tags > MAX_NESTING and _may_nest_deeply(data):
        depth = nesting_depth(data)
        if depth > MAX_NESTING:
            raise ExtractionFailed(
                "too_deeply_nested", f"markup nested about {depth:,} deep (over {MAX_NESTING:,})"
            )


# ------------------------------------------------------------------------------ time limit


class _PageTimeout(BaseException):
    """Raised by the alarm; a BaseException so that no library's `except Exception` eats it."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after `seconds` with SIGALRM (only possible in a main thread; the
    ingest stage runs web sources in a worker process when it is not in one)."""
    if threading.current_thread() is not threading.main_thread():
        started = time.monotonic()
        yield  # no interruption possible here; an overrun is still refused afterwards
        if time.monotonic() - started > seconds:
            raise _PageTimeout()
        return

    def _alarm(signum: int, frame: Any) -> None:
        raise _PageTimeout()

    previous = signal.signal(signal.SIGALRM, _alarm)
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    # An alarm that lands in a __del__ or a C callback is swallowed there ("Exception
    # ignored in ..."): a block that still overran counts as timed out all the same.
    if time.monotonic() - started > seconds:
        raise _PageTimeout()


# ------------------------------------------------------------------------------- metadata


def _attr(tree: Any, selector: str, attribute: str) -> str | None:
    node = tree.document.query_selector(selector)
    if node is None:
        return None
    value = node.getattr(attribute)
    return value.strip() or None if value else None


def page_metadata(tree: Any, html: str) -> dict[str, str | None]:
    """Title, author, date, canonical URL and declared language from a parsed page."""
    title = _attr(tree, 'meta[property="og:title"]', "content")
    if not title:
        title = (tree.title or "").strip() or None
    author = None
    for selector in (
        'meta[name="author"]',
        'meta[name="Author"]',
        'meta[property="article:author"]',
        'meta[name="dc.creator"]',
        'meta[name="byl"]',
    ):
        value = _attr(tree, selector, "content")
        if value and not value.startswith(("http://", "https://")):
            author = value
            break
    published = None
    for selector in (
        'meta[property="article:published_time"]',
        'meta[itemprop="datePublished"]',
        'meta[name="date"]',
        'meta[name="pubdate"]',
        'meta[name="publish-date"]',
        'meta[name="dc.date"]',
        'meta[name="DC.date.issued"]',
    ):
        published = _attr(tree, selector, "content")
        if published:
            break
    if not published:
        match = _JSONLD_DATE.search(html)
        published = match.group(1) if match else _attr(tree, "time[datetime]", "datetime")
    canonical = _attr(tree, 'link[rel="canonical"]', "href") or _attr(
        tree, 'meta[property="og:url"]', "content"
    )
    lang = _attr(tree, "html", "lang") or _attr(
        tree, 'meta[http-equiv="content-language"]', "content"
    )
    return {
        "title": title,
        "author": author,
        "published": published,
        "canonical_url": canonical if canonical and "://" in canonical else None,
        "lang_hint": lang,
    }


# ------------------------------------------------------------------------------ extraction


def _tidy(text: str | None) -> str:
    if not text:
        return ""
    lines = [line.strip() for line in text.replace("\r\n", "\n").split("\n")]
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


def _words(line: str) -> int:
    """Words in a line; CJK text has no spaces, so count two of its characters as a word."""
    spaced = len(line.split())
    if len(line) < 8 * spaced:
        return spaced
    return max(spaced, len(_CJK.findall(line)) // 2)


def looks_wrong(text: str, settings: ExtractionConfig) -> bool:
    """Whether a fast result is likely a menu or a fragment rather than the page's text."""
    lines = [line for line in text.split("\n") if line.strip()]
    words = [_words(line) for line in lines]
    if sum(words) < settings.fallback_min_words:
        return True
    short = sum(1 for n in words if n <= SHORT_LINE_WORDS)
    return short / len(lines) > settings.fallback_short_line_fraction


class HtmlExtractor:
    """One per process; `extract` is called once per page."""

    def __init__(self, settings: ExtractionConfig):
        self.settings = settings
        # Import (and warm up) the extractors here, not under a page's time limit: an alarm
        # that fired inside an import would leave a half-imported module behind.
        import trafilatura  # noqa: F401
        from resiliparse.extract.html2text import extract_plain_text  # noqa: F401
        from resiliparse.parse.html import HTMLTree  # noqa: F401

        if settings.extractor != "resiliparse":
            self._trafilatura("<html><body><p>warm up</p></body></html>")

    def _fast(self, tree: Any) -> str:
        from resiliparse.extract.html2text import extract_plain_text

        return _tidy(
            extract_plain_text(
                tree,
                main_content=True,
                alt_texts=False,
                comments=False,
                list_bullets=False,
                skip_elements=FAST_SKIP_ELEMENTS,
            )
        )

    def _trafilatura(self, html: str) -> str:
        import trafilatura

        return _tidy(
            trafilatura.extract(
                html,
                favor_precision=self.settings.favor_precision,
                include_comments=False,
                with_metadata=False,
            )
        )

    def extract(self, data: bytes, declared_charset: str | None = None) -> ExtractedPage:
        """Main text and metadata of one page, or `ExtractionFailed` with the reason."""
        if len(data) > self.settings.max_page_bytes:
            raise ExtractionFailed("page_too_large", f"{len(data):,} bytes > max_page_bytes")
        check_markup(data)
        html, encoding, replaced = decode_html(data, declared_charset)
        limit = self.settings.timeout_seconds
        started = time.monotonic()
        try:
            with time_limit(limit):
                page = self._extract_text(html)
        except _PageTimeout:
            raise ExtractionFailed(
                "extraction_timeout", f"extraction took longer than {limit} s"
            ) from None
        except Exception as exc:  # any extractor bug on one odd page refuses that page only
            if time.monotonic() - started > limit:
                # The alarm landed where it was swallowed ("Exception ignored in ...") and
                # left an extractor half-done: the page overran all the same.
                raise ExtractionFailed(
                    "extraction_timeout", f"extraction took longer than {limit} s"
                ) from None
            raise ExtractionFailed("extraction_error", f"{type(exc).__name__}: {exc}") from None
        page.encoding, page.replaced_bytes = encoding, replaced
        if not page.text:
            raise ExtractionFailed("no_extractable_text", "the page holds no main text")
        return page

    def _extract_text(self, html: str) -> ExtractedPage:
        from resiliparse.parse.html import HTMLTree

        tree = HTMLTree.parse(html)
        meta = page_metadata(tree, html)
        mode = self.settings.extractor
        if mode == "trafilatura":
            return ExtractedPage(self._trafilatura(html), "trafilatura", **meta)
        text = self._fast(tree)
        if mode == "resiliparse" or not looks_wrong(text, self.settings):
            return ExtractedPage(text, "resiliparse", **meta)
        slow = self._trafilatura(html)
        if slow:
            return ExtractedPage(slow, "trafilatura", **meta)
        return ExtractedPage(text, "resiliparse", **meta)


def fragment_text(html: str) -> str:
    """Text of an HTML fragment (a feed item's content), all of it, markup removed."""
    from resiliparse.extract.html2text import extract_plain_text

    if "<" not in html:
        return _tidy(html)
    if html.count("<") > MAX_TAGS:
        raise ExtractionFailed("too_many_tags", f"a fragment of over {MAX_TAGS:,} tags")
    return _tidy(extract_plain_text(html, main_content=False, alt_texts=False, links=False))


def page_canonical_url(data: bytes) -> str | None:
    """The canonical URL a saved page declares (for joining feed items with their pages)."""
    from resiliparse.parse.html import HTMLTree

    check_markup(data)
    html, _, _ = decode_html(data)
    return page_metadata(HTMLTree.parse(html), html)["canonical_url"]
