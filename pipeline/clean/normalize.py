"""Text repair and normalization: a document's raw text in, the canonical text later stages see.

`repair_unicode` undoes encoding accidents with ftfy (mojibake such as "cafÃ©", HTML entities,
C1 controls, terminal escapes). It is configured as datatrove's FTFY formatter is: it fixes what
is broken and enforces no style, so curly quotes, ligatures and full-width CJK punctuation stay.

`normalize_text` then normalizes Unicode to the configured form (NFC keeps compatibility
characters such as ligatures and full-width forms, NFKC folds them), turns line endings into
`\\n`, drops control characters other than newline and tab (and a stray byte-order mark),
strips trailing spaces from each line, and shrinks runs of blank lines to one.
"""

from __future__ import annotations

import re
import unicodedata

import ftfy

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]")
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)
_BLANK_LINE_RUN = re.compile(r"\n{3,}")
# Plain ASCII with no entity and no escape sequence has nothing ftfy would change here.
_FTFY_MAY_CHANGE = re.compile(r"[^\x00-\x7f]|&|\x1b")

FTFY_CONFIG = ftfy.TextFixerConfig(
    unescape_html="auto",
    remove_terminal_escapes=True,
    fix_encoding=True,
    restore_byte_a0=True,
    replace_lossy_sequences=True,
    decode_inconsistent_utf8=True,
    fix_c1_controls=True,
    fix_latin_ligatures=False,
    fix_character_width=False,
    uncurl_quotes=False,
    fix_line_breaks=False,
    fix_surrogates=True,
    remove_control_chars=True,
    normalization=None,
    explain=False,
)


def repair_unicode(text: str) -> str:
    """The text with encoding accidents undone (see the module docstring)."""
    if not _FTFY_MAY_CHANGE.search(text):
        return text
    return ftfy.fix_text(text, FTFY_CONFIG)


def normalize_text(text: str, unicode_form: str = "NFC") -> str:
    text = unicodedata.normalize(unicode_form, text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL_CHARS.sub("", text)
    text = _TRAILING_SPACE.sub("", text)
    text = _BLANK_LINE_RUN.sub("\n\n", text)
    return text.strip()
