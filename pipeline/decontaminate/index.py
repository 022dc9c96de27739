"""The evaluation-side n-gram index: evaluation examples in, a lookup table of n-grams out.

In: `EvalExample`s (set name, example id, text), the n-gram size and the shortest example
checked. Out: an `EvalIndex`: the sorted unique hashes of every example's n-grams, for each
hash the examples that hold it, the vocabulary of the examples' words (so a training document's
words are looked up, not hashed), and per set how many examples it has and how many are too
short to check.

An example of at least `ngram_size` words contributes all its windows of `ngram_size` words; a
shorter one of at least `min_example_words` words contributes itself as one window (as GPT-3
did for short examples); a shorter one cannot be checked.

The index is saved as numpy arrays (`index.npz`, read without pickle) and JSON in a folder named
by the cache key, a hash of the evaluation files' contents and the index parameters, so it is
built once per set of evaluation files and read by every later run (`load_or_build`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.decontaminate.ngrams import (
    WindowHasher,
    normalized_words,
    word_value,
)

BITMAP_BITS = 27  # a 16 MB prefilter: ~0.6% of windows pass it falsely per million n-grams


@dataclass(frozen=True)
class EvalExample:
    set: str  # the evaluation set (task name)
    example_id: str  # "file:line", "file:article N", the task's locator
    text: str


@dataclass
class EvalIndex:
    ngram_size: int
    lengths: list[int]  # window lengths held: ngram_size and shorter whole examples
    hashes: np.ndarray  # sorted unique uint64
    offsets: np.ndarray  # int64, len(hashes) + 1: owners[offsets[i]:offsets[i+1]] hold hash i
    owners: np.ndarray  # int32 example numbers
    vocabulary: dict[str, int]  # word -> value, for the words of the examples
    example_sets: list[str]  # per example number
    example_ids: list[str]
    sets: dict[str, dict[str, int]] = field(default_factory=dict)  # examples, too_short, ngrams
    _bitmap: np.ndarray | None = field(default=None, repr=False)

    def _prefilter(self) -> np.ndarray:
        """A bitmap of the hashes' top bits: one memory read per window rules nearly all of a
        document's windows out (a binary search in a large array costs ~20 reads)."""
        if self._bitmap is None:
            bitmap = np.zeros(1 << (BITMAP_BITS - 3), dtype=np.uint8)
            top = self.hashes >> np.uint64(64 - BITMAP_BITS)
            np.bitwise_or.at(
                bitmap, top >> np.uint64(3), np.left_shift(1, top & np.uint64(7)).astype(np.uint8)
            )
            self._bitmap = bitmap
        return self._bitmap

    def lookup(self, window_hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The positions of `window_hashes` that the index holds, and their index rows."""
        if not len(self.hashes) or not len(window_hashes):
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        top = window_hashes >> np.uint64(64 - BITMAP_BITS)
        maybe = np.flatnonzero((self._prefilter()[top >> np.uint64(3)] >> (top & np.uint64(7))) & 1)
        if not len(maybe):
            return maybe, maybe
        rows = np.searchsorted(self.hashes, window_hashes[maybe])
        rows[rows == len(self.hashes)] = 0
        found = self.hashes[rows] == window_hashes[maybe]
        return maybe[found], rows[found]

    def examples_of_row(self, row: int) -> np.ndarray:
        return self.owners[self.offsets[row] : self.offsets[row + 1]]


def build_index(
    examples: Iterable[EvalExample], ngram_size: int, min_example_words: int
) -> EvalIndex:
    """Hash every example's n-grams into one index."""
    vocabulary: dict[str, int] = {}
    parts: list[np.ndarray] = []
    part_owners: list[np.ndarray] = []
    example_sets: list[str] = []
    example_ids: list[str] = []
    sets: dict[str, Counter[str]] = {}
    lengths = {ngram_size}
    for example in examples:
        stats = sets.setdefault(example.set, Counter())
        stats["examples"] += 1
        words = normalized_words(example.text)
        if len(words) >= ngram_size:
            m = ngram_size
        elif len(words) >= min_example_words:
            m = len(words)
            stats["matched_whole"] += 1
        else:
            stats["too_short"] += 1
            continue
        lengths.add(m)
        values = []
        for word in words:
            value = vocabulary.get(word)
            if value is None:
                value = vocabulary[word] = word_value(word)
            values.append(value)
        windows = np.unique(WindowHasher(np.array(values, dtype=np.uint64)).windows(m))
        number = len(example_sets)
        example_sets.append(example.set)
        example_ids.append(example.example_id)
        parts.append(windows)
        part_owners.append(np.full(len(windows), number, dtype=np.int32))
        stats["ngrams"] += len(windows)
    all_hashes = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)
    all_owners = np.concatenate(part_owners) if parts else np.empty(0, dtype=np.int32)
    order = np.lexsort((all_owners, all_hashes))
    all_hashes, all_owners = all_hashes[order], all_owners[order]
    starts = np.flatnonzero(np.r_[True, all_hashes[1:] != all_hashes[:-1]]) if len(order) else []
    offsets = np.r_[starts, len(all_hashes)].astype(np.int64)
    return EvalIndex(
        ngram_size=ngram_size,
        lengths=sorted(lengths),
        hashes=all_hashes[offsets[:-1]] if len(order) else all_hashes,
        offsets=offsets,
        owners=all_owners,
        vocabulary=vocabulary,
        example_sets=example_sets,
        example_ids=example_ids,
        sets={name: {k: int(v) for k, v in counts.items()} for name, counts in sets.items()},
    )


# ------------------------------------------------------------------------------- the cache

ARRAYS = "index.npz"
DESCRIPTION = "index.json"


def save_index(index: EvalIndex, folder: Path) -> None:
    """Write the index into `folder` (a temporary sibling renamed into place)."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    words = list(index.vocabulary)
    np.savez(
        tmp / ARRAYS,
        hashes=index.hashes,
        offsets=index.offsets,
        owners=index.owners,
        word_values=np.array([index.vocabulary[w] for w in words], dtype=np.uint64),
    )
    description = {
        "ngram_size": index.ngram_size,
        "lengths": index.lengths,
        "sets": index.sets,
        "words": words,
        "example_sets": index.example_sets,
        "example_ids": index.example_ids,
    }
    (tmp / DESCRIPTION).write_text(json.dumps(description), encoding="utf-8")
    try:
        os.replace(tmp, folder)
    except OSError:  # another run put the same index there first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)


def load_index(folder: Path) -> EvalIndex:
    folder = Path(folder)
    description = json.loads((folder / DESCRIPTION).read_text(encoding="utf-8"))
    with np.load(folder / ARRAYS, allow_pickle=False) as arrays:
        hashes, offsets, owners = arrays["hashes"], arrays["offsets"], arrays["owners"]
        values = arrays["word_values"].tolist()
    return EvalIndex(
        ngram_size=description["ngram_size"],
        lengths=description["lengths"],
        hashes=hashes,
        offsets=offsets,
        owners=owners,
        vocabulary=dict(zip(description["words"], values, strict=True)),
        example_sets=description["example_sets"],
        example_ids=description["example_ids"],
        sets=description["sets"],
    )


def load_or_build(
    cache: Path, build: Callable[[], EvalIndex], log: Callable[[str], None] | None = None
) -> tuple[Path, dict[str, Any]]:
    """The folder of the index cached at `cache`, built first when it is not there yet."""
    cache = Path(cache)
    if (cache / DESCRIPTION).is_file():
        return cache, {"built": False, "seconds": 0.0}
    started = time.perf_counter()
    index = build()
    save_index(index, cache)
    seconds = round(time.perf_counter() - started, 3)
    if log:
        log(f"decontaminate: eval index built in {seconds:.2f} s ({len(index.hashes):,} n-grams)")
    return cache, {"built": True, "seconds": seconds}
