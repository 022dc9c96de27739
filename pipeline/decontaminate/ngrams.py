"""Word n-grams for decontamination: normalized words in, 64-bit n-gram hashes out.

In: texts (evaluation examples on one side, training documents on the other). Out: the
normalized words of a text, their 64-bit word values, and the hash of every window of `m`
consecutive words, computed with numpy for all windows at once.

Normalization (the same as the exact-dedup key, pipeline/dedup/exact.py): lowercase, Unicode
punctuation removed, split on whitespace; so "Hello, World!" and "hello world" are the same
two words. ASCII texts (nearly all of an English corpus) take a bytes fast path that gives the
same words.

A window's hash is a polynomial over its word values, modulo 2**64:
`h(w_0..w_{m-1}) = sum_k value(w_k) * P**(m-1-k)`. With prefix sums of `value(w_j) * P**-j`
(P is odd, so it has an inverse modulo 2**64) every window of any length is two subtractions
and a product away, so a document is hashed in a few numpy operations per window length.
Words that no evaluation example contains get the value 0, which no indexed n-gram holds.
"""

from __future__ import annotations

import string
import unicodedata
from itertools import repeat

import numpy as np
import xxhash

from pipeline.dedup.exact import PUNCTUATION_TABLE

NORMALIZATION = "lower-nopunct-whitespace-v1"  # part of the index cache key
_P = 0x9E3779B97F4A7C15  # odd: invertible modulo 2**64
_P_INV = pow(_P, -1, 2**64)

# ASCII fast path: lowercase, delete ASCII punctuation (Unicode category P*), and turn the
# separators that str.split() treats as whitespace (0x1c-0x1f) into spaces.
_ASCII_PUNCTUATION = bytes(c for c in range(128) if unicodedata.category(chr(c)).startswith("P"))
_ASCII_TABLE = bytes.maketrans(
    string.ascii_uppercase.encode() + b"\x1c\x1d\x1e\x1f",
    string.ascii_lowercase.encode() + b"    ",
)


def normalized_words(text: str) -> list[str]:
    """The words of a text as compared: lowercase, no punctuation, split on whitespace."""
    if text.isascii():
        return text.encode().translate(_ASCII_TABLE, _ASCII_PUNCTUATION).decode().split()
    return text.lower().translate(PUNCTUATION_TABLE).split()


def word_value(word: str) -> int:
    """A word's 64-bit value (never 0: 0 stands for a word no example contains)."""
    return xxhash.xxh3_64_intdigest(word.encode("utf-8")) | 1


class Powers:
    """P**k and P**-k modulo 2**64 for k < n, grown on demand."""

    def __init__(self) -> None:
        self.forward = np.ones(1, dtype=np.uint64)
        self.inverse = np.ones(1, dtype=np.uint64)

    def upto(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.forward) < n:
            size = max(n, 2 * len(self.forward), 1024)
            forward, inverse = [1], [1]
            for _ in range(size - 1):
                forward.append(forward[-1] * _P % 2**64)
                inverse.append(inverse[-1] * _P_INV % 2**64)
            self.forward = np.array(forward, dtype=np.uint64)
            self.inverse = np.array(inverse, dtype=np.uint64)
        return self.forward[:n], self.inverse[:n]


_POWERS = Powers()


def word_values(words: list[str], vocabulary: dict[str, int] | None = None) -> np.ndarray:
    """Each word's value: from `vocabulary` (0 for words not in it), or computed."""
    if vocabulary is None:
        return np.fromiter(map(word_value, words), dtype=np.uint64, count=len(words))
    return np.fromiter(map(vocabulary.get, words, repeat(0)), dtype=np.uint64, count=len(words))


class WindowHasher:
    """The hashes of every window of a word sequence, for any window length."""

    def __init__(self, values: np.ndarray):
        self.length = len(values)
        forward, inverse = _POWERS.upto(self.length)
        self._forward = forward
        with np.errstate(over="ignore"):  # arithmetic modulo 2**64 is the point
            self._prefix = np.zeros(self.length + 1, dtype=np.uint64)
            np.cumsum(values * inverse, out=self._prefix[1:])

    def windows(self, m: int) -> np.ndarray:
        """Hash of the window starting at each position i (0 <= i <= length - m)."""
        if m > self.length:
            return np.empty(0, dtype=np.uint64)
        with np.errstate(over="ignore"):
            return (self._prefix[m:] - self._prefix[: self.length - m + 1]) * self._forward[m - 1 :]
