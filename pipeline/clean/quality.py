"""Quality signals and the rules that decide on them: language, Gopher, C4 and FineWeb.

In: a cleaned document text (and its language) and a `CleanConfig`. Out: `compute_signals(text)`,
a dict of named numbers (word count, duplicate-line fraction, share of lines ending in
punctuation, ...), and `quality_rules(cfg)`, the list of `QualityRule`s in the order they are
tried, each comparing one signal with one threshold of the config. A rule's name is the config
field that holds its threshold, so a rejection reason points straight at the knob.

Signals first, decisions second: every signal is computed for every document and kept, so a
threshold can be re-tuned later from the stored signals without re-reading any text.

Words are whitespace-separated tokens; a token's leading and trailing punctuation is not part
of the word (datatrove splits with spaCy instead: counts differ by a few percent, and this is
~20x faster). The rule families and their defaults:

- language: the ingest language and its score (FineWeb: English, score >= 0.65);
- Gopher quality (Rae et al. 2021): 50-100,000 words, mean word length 3-10, '#' or ellipsis
  per word <= 0.1, bullet lines <= 90%, lines ending in an ellipsis <= 30%, >= 80% of words with
  a letter, >= 2 English stop words;
- Gopher repetition: duplicate lines/paragraphs (by count and by characters), the share of the
  characters taken by the most frequent 2-, 3-, 4-gram and by repeated 5- to 10-grams;
- C4 (Raffel et al. 2020), after its line edits (pipeline/clean/lines.py): no "lorem ipsum",
  no curly bracket, at least 5 sentences;
- FineWeb (Penedo et al. 2024): >= 12% of lines end in punctuation, <= 67% of lines are 30
  characters or shorter, <= 10% of characters in duplicated lines, <= 0.3 newlines per word.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config import CleanConfig

# Characters stripped from both ends of a token to get its word (ASCII and common Unicode).
PUNCTUATION = string.punctuation + "¡¿«»‹›“”‘’‚„—–…·•′″§¶†‡°"
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "-", "*", "◦", "‣", "▪", "●", "–")
TERMINAL_PUNCTUATION = (".", "!", "?", '"', "'", "”", "’", "…", "。", "！", "？", ")")
SHORT_LINE_CHARS = 30
TOP_NGRAMS = (2, 3, 4)
DUPLICATE_NGRAMS = (5, 6, 7, 8, 9, 10)
_HAS_LETTER = re.compile(r"[^\W\d_]")
_SENTENCE_END = re.compile(r"[.!?…。！？]+[\"'”’)\]]*(?=\s|$)")
SMALL = 128  # below this many tokens, plain Python beats numpy's per-call overhead
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier for n-gram keys


class TextView:
    """The splits of a text that several signals share, computed once."""

    __slots__ = ("text", "tokens", "words", "lines", "paragraphs", "_lower_words")

    def __init__(self, text: str):
        self.text = text
        self.tokens = text.split()
        stripped = [t.strip(PUNCTUATION) for t in self.tokens]
        self.words = [w for w in stripped if w]  # tokens that are not bare punctuation
        self.lines = [line.strip() for line in text.split("\n") if line.strip()]
        self.paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]


# ------------------------------------------------------------------------------- helpers


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(how many items repeat an earlier one, their characters)."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def _next_ngram_keys(keys: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    """Keys of the n-grams from the keys of the (n-1)-grams (a polynomial hash of the token
    ids: equal n-grams get equal keys; unequal ones collide with probability ~2^-64)."""
    return keys[:-1] * _MULT + ids[n - 1 :]  # array arithmetic wraps silently mod 2^64


def _top_ngram_chars(keys: np.ndarray, starts: np.ndarray, n: int) -> int:
    """Characters of the most frequent n-gram (words joined by spaces) times its count; ties
    go to the n-gram seen first, as `Counter.most_common` orders them."""
    if not len(keys):
        return 0
    if len(keys) < SMALL:
        values = keys.tolist()
        key, best = Counter(values).most_common(1)[0]
        position = values.index(key)
    else:
        _, first, counts = np.unique(keys, return_index=True, return_counts=True)
        best = int(counts.max())
        position = int(first[counts == best].min())
    return int(starts[position + n] - starts[position] - 1) * best


def _repeated_ngram_chars(keys: np.ndarray, lengths: list[int], n: int) -> int:
    """Characters in n-grams that repeat an earlier one, skipping past each repeat (Gopher)."""
    values = keys.tolist()
    if len(values) < SMALL:
        index, seen = 0, set()
    else:
        _, first = np.unique(keys, return_index=True)
        if len(first) == len(keys):
            return 0
        repeats = np.ones(len(keys), dtype=bool)
        repeats[first] = False
        index = int(np.argmax(repeats))  # before the first repeat, every n-gram is new
        seen = set(values[:index])
    repeated, last = 0, len(values)
    while index < last:
        key = values[index]
        if key in seen:
            repeated += sum(lengths[index : index + n])
            index += n
        else:
            seen.add(key)
            index += 1
    return repeated


# ------------------------------------------------------------------------------- signals


def compute_signals(text: str) -> dict[str, float]:
    """Every signal of a text, rounded to 4 decimals (they are stored per document)."""
    view = TextView(text)
    tokens, words, lines, paragraphs = view.tokens, view.words, view.lines, view.paragraphs
    n_tokens = len(tokens) or 1
    n_lines = len(lines) or 1
    n_chars = len(text) or 1
    signals: dict[str, float] = {}

    # Gopher quality
    signals["word_count"] = len(words)
    signals["mean_word_length"] = sum(map(len, words)) / len(words) if words else 0.0
    ellipses = text.count("...") + text.count("…")
    signals["symbol_word_ratio"] = max(text.count("#"), ellipses) / n_tokens if tokens else 0.0
    signals["bullet_line_ratio"] = sum(line.startswith(BULLETS) for line in lines) / n_lines
    signals["ellipsis_line_ratio"] = sum(line.endswith(("...", "…")) for line in lines) / n_lines
    signals["alpha_word_ratio"] = (
        sum(1 for t in tokens if _HAS_LETTER.search(t)) / n_tokens if tokens else 0.0
    )
    lowered = {w.lower() for w in words if len(w) <= 4}
    signals["stop_word_count"] = len(STOP_WORDS & lowered)

    # Gopher repetition
    line_dups, line_dup_chars = _duplicates(lines)
    para_dups, para_dup_chars = _duplicates(paragraphs)
    signals["duplicate_line_fraction"] = line_dups / n_lines
    signals["duplicate_paragraph_fraction"] = para_dups / (len(paragraphs) or 1)
    signals["duplicate_line_char_fraction"] = line_dup_chars / n_chars
    signals["duplicate_paragraph_char_fraction"] = para_dup_chars / n_chars
    index: dict[str, int] = {}
    ids = np.array([index.setdefault(t, len(index)) for t in tokens], dtype=np.uint64)
    lengths = [len(t) for t in tokens]
    # starts[i]: characters of tokens[:i] plus one separator each, so that an n-gram joined
    # by spaces from position p spans starts[p + n] - starts[p] - 1 characters
    starts = np.concatenate([[0], np.cumsum(np.array(lengths, dtype=np.int64) + 1)])
    keys = ids
    any_repeat = len(ids) > DUPLICATE_NGRAMS[0]
    for n in range(2, DUPLICATE_NGRAMS[-1] + 1):
        if n in DUPLICATE_NGRAMS and not any_repeat:
            signals[f"duplicate_{n}gram_char_fraction"] = 0.0
            continue
        keys = _next_ngram_keys(keys, ids, n)
        if n in TOP_NGRAMS:
            signals[f"top_{n}gram_char_fraction"] = _top_ngram_chars(keys, starts, n) / n_chars
        elif n in DUPLICATE_NGRAMS:
            # no repeated 5-gram means no longer n-gram repeats either: skip the rest
            repeated = _repeated_ngram_chars(keys, lengths, n) if any_repeat else 0
            any_repeat = repeated > 0
            signals[f"duplicate_{n}gram_char_fraction"] = repeated / n_chars

    # C4 document rules
    lower = text.lower()
    signals["lorem_ipsum_count"] = lower.count("lorem ipsum")
    signals["curly_bracket_count"] = text.count("{")
    ends = len(_SENTENCE_END.findall(text))
    signals["sentence_count"] = ends + (1 if text and not _SENTENCE_END.search(text[-3:]) else 0)

    # FineWeb
    signals["line_punct_ratio"] = sum(line.endswith(TERMINAL_PUNCTUATION) for line in lines) / (
        n_lines
    )
    signals["short_line_ratio"] = sum(len(line) <= SHORT_LINE_CHARS for line in lines) / n_lines
    signals["duplicate_line_char_ratio"] = line_dup_chars / ((len(text) - text.count("\n")) or 1)
    signals["newline_word_ratio"] = text.count("\n") / n_tokens
    for name, measure in SIGNALS.items():  # signals added by `@signal`
        signals[name] = measure(view)
    return {name: round(float(value), 4) for name, value in signals.items()}


# Signals beyond the built-in ones: name -> function of the text's TextView.
SIGNALS: dict[str, Callable[[TextView], float]] = {}


def signal(name: str) -> Callable[[Callable[[TextView], float]], Callable[[TextView], float]]:
    """Register a signal: `@signal("uppercase_fraction")` on `def f(view: TextView) -> float`.
    Every document gets it (stored with the others); a rule (RULES) can then decide on it."""

    def register(measure: Callable[[TextView], float]) -> Callable[[TextView], float]:
        SIGNALS[name] = measure
        return measure

    return register


SIGNAL_NAMES = tuple(compute_signals("a b c d e f g h i j k.\nx"))


# --------------------------------------------------------------------------------- rules


def language_code(lang: str | None) -> str | None:
    """'en', 'EN', 'en-GB', 'en_US', 'eng' -> 'en'; None stays None."""
    if not lang:
        return None
    code = lang.strip().lower().replace("_", "-").split("-")[0]
    return _ISO639_3.get(code, code)


_ISO639_3 = {
    "eng": "en", "deu": "de", "ger": "de", "fra": "fr", "fre": "fr", "spa": "es", "ita": "it",
    "por": "pt", "nld": "nl", "dut": "nl", "rus": "ru", "zho": "zh", "chi": "zh", "jpn": "ja",
    "kor": "ko", "ara": "ar", "pol": "pl", "tur": "tr", "swe": "sv", "ces": "cs", "cze": "cs",
    "hin": "hi", "ukr": "uk", "vie": "vi", "ind": "id", "fin": "fi", "dan": "da", "nor": "no",
    "ell": "el", "gre": "el", "heb": "he", "hun": "hu", "ron": "ro", "rum": "ro",
}  # fmt: skip


@dataclass(frozen=True)
class QualityRule:
    """Keep a document when `signal <op> threshold` holds; `name` is the rejection reason.

    `op` is ">=" or "<=" for numbers, "in" for the language list. An `english_only` rule (the
    stop-word rule) passes documents whose language is known and not English. A missing
    language or language score passes the language rules.
    """

    name: str
    signal: str
    op: str
    threshold: Any
    family: str
    english_only: bool = False

    def passes(self, signals: dict[str, Any]) -> bool:
        value = signals.get(self.signal)
        if self.english_only and signals.get("lang") not in (None, "en"):
            return True
        if self.op == "in":
            return value is None or value in self.threshold
        if value is None:
            return True
        return value >= self.threshold if self.op == ">=" else value <= self.threshold

    def keep_if(self) -> str:
        if self.op == "in":
            return "in " + ", ".join(self.threshold)
        return f"{self.op} {self.threshold:g}"

    def explain(self, signals: dict[str, Any]) -> str:
        """Why a document failed, e.g. 'word_count=7 is below min_words=50'."""
        value = signals.get(self.signal)
        if self.op == "in":
            return f"{self.signal}={value} is not in {self.name}=[{', '.join(self.threshold)}]"
        side = "below" if self.op == ">=" else "above"
        return f"{self.signal}={value:g} is {side} {self.name}={self.threshold:g}"


@dataclass(frozen=True)
class RuleSpec:
    """A threshold rule: the config field that holds its threshold (None: off) is its name."""

    name: str
    signal: str
    op: str  # ">=" or "<="
    family: str
    english_only: bool = False


# The threshold rules in the order they are tried, after the language list (the n-gram rules
# and the C4 switches follow them, see quality_rules). A new rule: a signal (built in, or
# `@signal`), a row here, and its threshold field in CleanConfig.
RULES: list[RuleSpec] = [
    RuleSpec("min_language_score", "lang_score", ">=", "language"),
    RuleSpec("min_words", "word_count", ">=", "gopher_quality"),
    RuleSpec("max_words", "word_count", "<=", "gopher_quality"),
    RuleSpec("min_mean_word_length", "mean_word_length", ">=", "gopher_quality"),
    RuleSpec("max_mean_word_length", "mean_word_length", "<=", "gopher_quality"),
    RuleSpec("max_symbol_word_ratio", "symbol_word_ratio", "<=", "gopher_quality"),
    RuleSpec("max_bullet_line_ratio", "bullet_line_ratio", "<=", "gopher_quality"),
    RuleSpec("max_ellipsis_line_ratio", "ellipsis_line_ratio", "<=", "gopher_quality"),
    RuleSpec("min_alpha_word_ratio", "alpha_word_ratio", ">=", "gopher_quality"),
    RuleSpec("min_stop_words", "stop_word_count", ">=", "gopher_quality", english_only=True),
    RuleSpec("max_duplicate_line_fraction", "duplicate_line_fraction", "<=", "gopher_repetition"),
    RuleSpec(
        "max_duplicate_paragraph_fraction",
        "duplicate_paragraph_fraction",
        "<=",
        "gopher_repetition",
    ),
    RuleSpec(
        "max_duplicate_line_char_fraction",
        "duplicate_line_char_fraction",
        "<=",
        "gopher_repetition",
    ),
    RuleSpec(
        "max_duplicate_paragraph_char_fraction",
        "duplicate_paragraph_char_fraction",
        "<=",
        "gopher_repetition",
    ),
]
# Tried last, after C4's switches: the thresholds of C4's sentences and of FineWeb.
LATE_RULES: list[RuleSpec] = [
    RuleSpec("c4_min_sentences", "sentence_count", ">=", "c4"),
    RuleSpec("fineweb_min_line_punct_ratio", "line_punct_ratio", ">=", "fineweb"),
    RuleSpec("fineweb_max_short_line_ratio", "short_line_ratio", "<=", "fineweb"),
    RuleSpec("fineweb_max_duplicate_line_char_ratio", "duplicate_line_char_ratio", "<=", "fineweb"),
    RuleSpec("fineweb_max_newline_word_ratio", "newline_word_ratio", "<=", "fineweb"),
]


def _threshold_rules(specs: list[RuleSpec], cfg: CleanConfig) -> list[QualityRule]:
    rules = []
    for spec in specs:
        threshold = getattr(cfg, spec.name, None)
        if threshold is not None:
            rules.append(
                QualityRule(
                    spec.name, spec.signal, spec.op, threshold, spec.family, spec.english_only
                )
            )
    return rules


def quality_rules(cfg: CleanConfig) -> list[QualityRule]:
    """The enabled rules in the order they are tried; the first that fails names the reason."""
    rules: list[QualityRule] = []
    if cfg.languages:
        codes = tuple(sorted({language_code(lang) or lang for lang in cfg.languages}))
        rules.append(QualityRule("languages", "lang", "in", codes, "language"))
    rules += _threshold_rules(RULES, cfg)
    for n, limit in cfg.max_top_ngram_char_fraction.items():
        rules.append(
            QualityRule(
                f"max_top_{n}gram_char_fraction",
                f"top_{n}gram_char_fraction",
                "<=",
                limit,
                "gopher_repetition",
            )
        )
    for n, limit in cfg.max_duplicate_ngram_char_fraction.items():
        rules.append(
            QualityRule(
                f"max_duplicate_{n}gram_char_fraction",
                f"duplicate_{n}gram_char_fraction",
                "<=",
                limit,
                "gopher_repetition",
            )
        )
    if cfg.c4_drop_lorem_ipsum:
        rules.append(QualityRule("c4_drop_lorem_ipsum", "lorem_ipsum_count", "<=", 0, "c4"))
    if cfg.c4_drop_curly_bracket:
        rules.append(QualityRule("c4_drop_curly_bracket", "curly_bracket_count", "<=", 0, "c4"))
    return rules + _threshold_rules(LATE_RULES, cfg)


def first_failed_rule(rules: list[QualityRule], signals: dict[str, Any]) -> QualityRule | None:
    return next((rule for rule in rules if not rule.passes(signals)), None)
