"""C4's line edits: a text in, the text without the lines C4 drops, and what was dropped.

Each line (blank lines separate paragraphs and are kept) is dropped when it has a word longer
than `c4_max_word_length`, fewer than `c4_min_words_per_line` words, mentions "javascript", or
holds a cookie / terms-of-use / privacy-policy phrase; with `c4_keep_only_terminal_punctuation_
lines` (C4's rule, off by default as in FineWeb) also when it does not end in terminal
punctuation. Wikipedia-style citations ("[1]", "[edit]", "[citation needed]") are removed from
the lines that stay. The C4 document rules (lorem ipsum, curly brackets, sentences) are signals
of the edited text, in pipeline/clean/quality.py.
"""

from __future__ import annotations

import re
from collections import Counter

from pipeline.config import CleanConfig

CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
POLICY_PHRASES = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
C4_TERMINAL = (".", "?", "!", '"', "'")
_BLANK_LINE_RUN = re.compile(r"\n{3,}")


def c4_line_edits(text: str, cfg: CleanConfig) -> tuple[str, Counter[str]]:
    """The text after C4's line edits, and counts of `lines_<reason>` and `citations`."""
    counts: Counter[str] = Counter()
    kept: list[str] = []
    min_words = cfg.c4_min_words_per_line
    max_word = cfg.c4_max_word_length
    for line in text.split("\n"):
        stripped = line.strip()
        if not stripped:
            kept.append("")
            continue
        words = stripped.split()
        if max_word and any(len(w) > max_word for w in words):
            counts["lines_too_long_word"] += 1
            continue
        if cfg.c4_remove_citations and "[" in stripped:
            stripped, found = CITATION.subn("", stripped)
            counts["citations"] += found
            line = stripped
        if cfg.c4_keep_only_terminal_punctuation_lines and (
            not stripped.endswith(C4_TERMINAL) or stripped.endswith("...")
        ):
            counts["lines_no_terminal_punctuation"] += 1
            continue
        if len(words) < min_words:
            counts["lines_too_few_words"] += 1
            continue
        lowered = stripped.lower()
        if cfg.c4_remove_javascript_lines and "javascript" in lowered:
            counts["lines_javascript"] += 1
            continue
        if cfg.c4_remove_policy_lines and any(p in lowered for p in POLICY_PHRASES):
            counts["lines_policy"] += 1
            continue
        kept.append(line)
    if not counts:
        return text, counts
    edited = _BLANK_LINE_RUN.sub("\n\n", "\n".join(kept)).strip()
    return edited, counts
