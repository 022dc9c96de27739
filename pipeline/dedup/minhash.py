"""MinHash signatures and LSH band keys: document texts in, one row of band keys per text out.

A text is simplified as FineWeb's dedup does (lowercase, punctuation and symbols become spaces,
digits become 0), split into words, and cut into overlapping word n-grams ("shingles"; a text
shorter than n words is one shingle). Each shingle is hashed to 64 bits (xxh3 of its words),
and each of the `bands * rows` hash functions `h_i(x) = a_i * x + b_i mod 2^64` (a_i odd; a
bijection, so a random permutation of 64-bit keys) keeps its minimum over the text's shingles.
Two texts agree on one such minimum with probability about their Jaccard similarity. The
`rows` minima of a band are folded into one 64-bit band key; texts that share any band key are
candidate duplicates. With b bands of r rows, a pair of Jaccard similarity s becomes a
candidate with probability 1 - (1 - s^r)^b: for FineWeb's 14 x 8 that is 0.56 at s=0.7, 0.92
at 0.8 and 0.99 at 0.85.

Everything runs on numpy arrays over a batch of texts (one matrix of shingles x hash functions,
then a minimum per text), so the per-text Python work is only the splitting and word hashing.
Texts with no words have no band keys (None) and never match anything here; exact dedup still
sees them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import xxhash

_NOT_WORD = re.compile(r"[^\w\s]|_")
_DIGIT = re.compile(r"\d")
_COMBINE = np.uint64(0x9E3779B97F4A7C15)
CHUNK_CELLS = 1 << 20  # shingles x hash functions per numpy step: 8 MB of uint64


def shingle_words(text: str) -> list[str]:
    """The words a text is shingled from: lowercase, no punctuation, digits as 0."""
    return _DIGIT.sub("0", _NOT_WORD.sub(" ", text.lower())).split()


def lsh_probability(similarity: float, bands: int, rows: int) -> float:
    """Chance that a pair of this Jaccard similarity shares at least one band key."""
    return 1.0 - (1.0 - similarity**rows) ** bands


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: spreads every input bit over the whole 64-bit output."""
    values = values ^ (values >> np.uint64(30))
    values = values * np.uint64(0xBF58476D1CE4E5B9)
    values = values ^ (values >> np.uint64(27))
    values = values * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


class MinHasher:
    """MinHash signatures and band keys with `bands * rows` hash functions from `seed`."""

    def __init__(self, ngram_size: int = 5, bands: int = 14, rows: int = 8, seed: int = 1):
        self.ngram_size = ngram_size
        self.bands = bands
        self.rows = rows
        self.seed = seed
        rng = np.random.default_rng(seed)
        count = bands * rows
        self.a = rng.integers(0, 2**63, size=count, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 2**63, size=count, dtype=np.uint64)
        self._word_hashes: dict[str, int] = {}

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    def shingle_hashes(self, text: str) -> np.ndarray:
        """One 64-bit hash per word n-gram of the text (empty for a text with no words)."""
        words = shingle_words(text)
        if not words:
            return np.empty(0, dtype=np.uint64)
        cache = self._word_hashes
        if len(cache) > 1_000_000:  # a bounded cache of frequent words
            cache.clear()
        hashes = []
        for word in words:
            value = cache.get(word)
            if value is None:
                value = cache[word] = xxhash.xxh3_64_intdigest(word.encode(), seed=self.seed)
            hashes.append(value)
        ids = np.array(hashes, dtype=np.uint64)
        n = min(self.ngram_size, len(ids))
        keys = ids[: len(ids) - n + 1].copy()
        with np.errstate(over="ignore"):
            for offset in range(1, n):
                keys = keys * _COMBINE + ids[offset : len(ids) - n + 1 + offset]
        return _mix(keys)

    def signatures(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(signatures, has_shingles): a (texts x num_perm) uint64 matrix of minima, and which
        texts had any shingle (the others' rows are meaningless)."""
        shingles = [self.shingle_hashes(t) for t in texts]
        counts = np.array([len(s) for s in shingles], dtype=np.int64)
        out = np.full((len(texts), self.num_perm), np.iinfo(np.uint64).max, dtype=np.uint64)
        if not counts.sum():
            return out, counts > 0
        stacked = np.concatenate(shingles)
        owner = np.repeat(np.arange(len(texts)), counts)  # the text of each shingle
        # Chunks of rows small enough to stay in cache, computed in place: several times
        # faster than one big temporary matrix.
        chunk = max(1, CHUNK_CELLS // self.num_perm)
        buffer = np.empty((chunk, self.num_perm), dtype=np.uint64)
        for start in range(0, len(stacked), chunk):
            rows = stacked[start : start + chunk]
            owners = owner[start : start + chunk]
            permuted = buffer[: len(rows)]
            with np.errstate(over="ignore"):
                np.multiply(rows[:, None], self.a[None, :], out=permuted)
                np.add(permuted, self.b[None, :], out=permuted)
            firsts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
            minima = np.minimum.reduceat(permuted, firsts, axis=0)
            texts_here = owners[firsts]  # distinct within a chunk
            out[texts_here] = np.minimum(out[texts_here], minima)
        return out, counts > 0

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """(texts x bands) uint64: each band's `rows` minima folded into one key."""
        shaped = signatures.reshape(len(signatures), self.bands, self.rows)
        keys = np.zeros((len(signatures), self.bands), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for row in range(self.rows):
                keys = _mix(keys * _COMBINE + shaped[:, :, row])
        return keys

    def text_band_keys(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(band keys, has_shingles) for a batch of texts."""
        signatures, has = self.signatures(texts)
        return self.band_keys(signatures), has


def estimated_jaccard(first: np.ndarray, second: np.ndarray) -> float:
    """The share of hash functions on which two signatures agree."""
    return float(np.mean(first == second))


def jaccard(first: str, second: str, ngram_size: int = 5) -> float:
    """Exact Jaccard similarity of two texts' word n-gram sets (for tests and benchmarks)."""

    def grams(text: str) -> set[tuple[str, ...]]:
        words = shingle_words(text)
        n = min(ngram_size, len(words))
        return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)} if words else set()

    a, b = grams(first), grams(second)
    return len(a & b) / len(a | b) if a or b else 1.0
