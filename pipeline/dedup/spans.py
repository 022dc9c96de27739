"""Repeated lines or paragraphs across documents: texts in, span keys out; removal of spans.

A span is a non-blank line (`lines`) or a blank-line-separated block (`paragraphs`). Its key
is the 64-bit hash of its `dedup_key`, so case, punctuation and spacing do not matter. The
dedup stage keeps the first occurrence of each key in document order and removes the later
ones, as C4 and Dolma remove a news site's repeated boilerplate ("Follow us on ...", "Sign up
for our newsletter"); a document left too short is dropped.
"""

from __future__ import annotations

import re

import xxhash

from pipeline.dedup.exact import dedup_key

_BLANK_LINE_RUN = re.compile(r"\n{3,}")


def split_spans(text: str, unit: str) -> list[str]:
    """The spans of a text, in order, as they appear in it (stripped)."""
    if unit == "lines":
        return [line.strip() for line in text.split("\n") if line.strip()]
    return [block.strip() for block in text.split("\n\n") if block.strip()]


def span_keys(text: str, unit: str) -> list[int]:
    """One signed 64-bit key per span (0 for a span with nothing left once normalized)."""
    keys = []
    for span in split_spans(text, unit):
        key = dedup_key(span)
        keys.append(xxhash.xxh3_64_intdigest(key.encode()) - (1 << 63) if key else 0)
    return keys


def remove_spans(text: str, unit: str, drop: set[int]) -> str:
    """The text without its spans at positions `drop` (positions as `split_spans` counts);
    the rest of the text, blank lines included, stays as it was."""
    separator = "\n" if unit == "lines" else "\n\n"
    kept, position = [], 0
    for piece in text.split(separator):
        if piece.strip():
            if position not in drop:
                kept.append(piece)
            position += 1
        else:
            kept.append(piece)
    return _BLANK_LINE_RUN.sub("\n\n", separator.join(kept)).strip()
