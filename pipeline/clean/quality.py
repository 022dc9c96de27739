"""Quality signals and the rules that decide on them (Gopher-style heuristics).

In: a normalized document text and a `CleanConfig`. Out: `compute_signals(text)`, a dict of
named numbers (word count, mean word length, ...), and `quality_rules(cfg)`, a list of
`QualityRule`s, each comparing one signal with one threshold of the config. A rule's name is
the config field that holds its threshold, so a rejection reason points straight at the knob.

Signals first, decisions second: every signal is computed for every document and kept, so a
threshold can be re-tuned later from the stored signals without re-reading any text.
"""

from __future__ import annotations

import operator
import string
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from pipeline.config import CleanConfig


@lru_cache(maxsize=65536)
def _is_punctuation_or_symbol(char: str) -> bool:
    return char in string.punctuation or unicodedata.category(char)[0] in "PS"


@dataclass
class TextView:
    """The splits of a text that several signals share, computed once."""

    words: list[str]  # whitespace-separated tokens
    content_words: list[str]  # tokens with at least one character that is not punctuation
    lines: list[str]  # non-blank lines, stripped

    @classmethod
    def of(cls, text: str) -> TextView:
        words = text.split()
        content_words = [w for w in words if not all(map(_is_punctuation_or_symbol, w))]
        lines = [line.strip() for line in text.split("\n") if line.strip()]
        return cls(words, content_words, lines)


# ------------------------------------------------------------------------------- signals
# Each takes the text and its view and returns a number; the function name is the signal name.


def word_count(text: str, view: TextView) -> float:
    """Words that are not bare punctuation ("--", "*" do not count)."""
    return len(view.content_words)


def mean_word_length(text: str, view: TextView) -> float:
    """Mean characters per word; very short means lists of symbols, very long means code/URLs."""
    if not view.content_words:
        return 0.0
    return sum(map(len, view.content_words)) / len(view.content_words)


def alpha_word_ratio(text: str, view: TextView) -> float:
    """Share of words holding at least one letter (any script); low for tables of numbers."""
    if not view.words:
        return 0.0
    return sum(any(c.isalpha() for c in w) for w in view.words) / len(view.words)


def symbol_word_ratio(text: str, view: TextView) -> float:
    """Hashes and ellipses per word: high in tag clouds and truncated snippet lists."""
    if not view.words:
        return 0.0
    symbols = text.count("#") + text.count("...") + text.count("\N{HORIZONTAL ELLIPSIS}")
    return symbols / len(view.words)


def duplicate_line_fraction(text: str, view: TextView) -> float:
    """Share of non-blank lines that repeat an earlier line: boilerplate, menus, spam."""
    if not view.lines:
        return 0.0
    seen: set[str] = set()
    repeats = 0
    for line in view.lines:
        if line in seen:
            repeats += 1
        else:
            seen.add(line)
    return repeats / len(view.lines)


SIGNALS: dict[str, Callable[[str, TextView], float]] = {
    f.__name__: f
    for f in (
        word_count,
        mean_word_length,
        alpha_word_ratio,
        symbol_word_ratio,
        duplicate_line_fraction,
    )
}


def compute_signals(text: str) -> dict[str, float]:
    """Every signal of a text, rounded to 4 decimals (they are stored per document)."""
    view = TextView.of(text)
    return {name: round(float(signal(text, view)), 4) for name, signal in SIGNALS.items()}


# --------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class QualityRule:
    """Keep a document when `signal <op> threshold` holds; `name` is the rejection reason."""

    name: str
    signal: str
    op: str  # ">=" keeps documents at or above the threshold, "<=" at or below
    threshold: float

    def passes(self, signals: dict[str, float]) -> bool:
        compare = operator.ge if self.op == ">=" else operator.le
        return compare(signals[self.signal], self.threshold)

    def explain(self, signals: dict[str, float]) -> str:
        """Why a document failed, e.g. 'word_count=7 is below min_words=20'."""
        side = "below" if self.op == ">=" else "above"
        return f"{self.signal}={signals[self.signal]:g} is {side} {self.name}={self.threshold:g}"


def quality_rules(cfg: CleanConfig) -> list[QualityRule]:
    """The rules in the order they are tried; the first that fails names the reason."""
    return [
        QualityRule("min_words", "word_count", ">=", cfg.min_words),
        QualityRule("max_words", "word_count", "<=", cfg.max_words),
        QualityRule("min_mean_word_length", "mean_word_length", ">=", cfg.min_mean_word_length),
        QualityRule("max_mean_word_length", "mean_word_length", "<=", cfg.max_mean_word_length),
        QualityRule("min_alpha_word_ratio", "alpha_word_ratio", ">=", cfg.min_alpha_word_ratio),
        QualityRule("max_symbol_word_ratio", "symbol_word_ratio", "<=", cfg.max_symbol_word_ratio),
        QualityRule(
            "max_duplicate_line_fraction",
            "duplicate_line_fraction",
            "<=",
            cfg.max_duplicate_line_fraction,
        ),
    ]


def first_failed_rule(rules: list[QualityRule], signals: dict[str, float]) -> QualityRule | None:
    return next((rule for rule in rules if not rule.passes(signals)), None)
