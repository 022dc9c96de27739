"""Text normalization: a document's raw text in, the canonical text every later stage sees out.

Unicode is normalized to the configured form (NFC keeps compatibility characters such as
ligatures and full-width forms, NFKC folds them), line endings become `\\n`, control characters
other than newline and tab are dropped (as is a stray byte-order mark), trailing spaces are
stripped from each line, and runs of blank lines shrink to one.
"""

from __future__ import annotations

import re
import unicodedata

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]")
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)
_BLANK_LINE_RUN = re.compile(r"\n{3,}")


def normalize_text(text: str, unicode_form: str = "NFC") -> str:
    text = unicodedata.normalize(unicode_form, text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL_CHARS.sub("", text)
    text = _TRAILING_SPACE.sub("", text)
    text = _BLANK_LINE_RUN.sub("\n\n", text)
    return text.strip()
