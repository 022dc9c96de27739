"""Exact-duplicate keys: a text in, the normalized form compared and its 128-bit digest out.

Two documents are exact duplicates when their texts match after `dedup_key` (lowercase,
Unicode punctuation removed, whitespace collapsed), so "Hello, World!" and "hello world" are
one text. The dedup stage (pipeline/dedup/stage.py) keeps the first occurrence in document
order and stores only the 16-byte digest per document, never the texts themselves.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

_WHITESPACE = re.compile(r"\s+")


class _PunctuationTable(dict):
    """A `str.translate` table that deletes Unicode punctuation (categories P*); each
    character's category is looked up once, then the translation runs at C speed."""

    def __missing__(self, code: int) -> int | None:
        value = None if unicodedata.category(chr(code)).startswith("P") else code
        self[code] = value
        return value


_DROP_PUNCTUATION = _PunctuationTable()
PUNCTUATION_TABLE = _DROP_PUNCTUATION  # for str.translate: deletes Unicode punctuation


def dedup_key(text: str) -> str:
    """The text as compared: lowercase, Unicode punctuation dropped, whitespace collapsed."""
    text = text.lower().translate(_DROP_PUNCTUATION)
    return _WHITESPACE.sub(" ", text).strip()


def text_digest(text: str) -> bytes:
    return hashlib.blake2b(dedup_key(text).encode("utf-8"), digest_size=16).digest()
