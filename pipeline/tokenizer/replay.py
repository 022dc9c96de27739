"""Replay for incremental runs: earlier increments' train documents mixed into today's shards.

In: a shards folder just written from today's new documents (`train-*.bin`, `val-*.bin`), the
shards folders of earlier increments (`run.replay_from`), the share of today's train tokens to
replay (`run.replay_fraction`), the end-of-text id and the vocabulary size.
Out: `train-replay-NNNNN.bin` shards in the same folder (pretraining reads every `train-*.bin`;
the val split is not touched, so today's held-out part stays today's documents only), and what
was replayed: tokens and documents, by earlier folder.

What is replayed: the earlier folders' own train documents (their `train-NNNNN.bin`, never their
replay shards: day 1 keeps its share instead of halving with each day), pooled and taken in the
order of a seeded permutation until the replayed tokens are fraction / (1 - fraction) x today's
train tokens, or all of them when there are fewer. The same inputs give the same shards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.tokenizer.token_shards import TokenShardWriter, load_tokens, split_paths

REPLAY_PREFIX = "train-replay"


def own_train_shards(folder: Path) -> list[Path]:
    """A shards folder's train shards of its own documents (its replay shards left out)."""
    return [p for p in split_paths(folder, "train") if not p.name.startswith(REPLAY_PREFIX + "-")]


def _documents(tokens: np.ndarray, eot_id: int) -> list[tuple[int, int]]:
    """(start, end) of each document: the ids up to and with its end-of-text token."""
    ends = (np.flatnonzero(tokens == eot_id) + 1).tolist()
    if not ends or ends[-1] != len(tokens):
        ends.append(len(tokens))
    starts = [0, *ends[:-1]]
    return [(s, e) for s, e in zip(starts, ends, strict=True) if e > s]


def add_replay(
    out_dir: Path,
    earlier: list[str | Path],
    fraction: float,
    eot_id: int,
    vocab_size: int,
    tokens_per_shard: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the replay shards into `out_dir`; returns {"replay_tokens", "replay_documents",
    "new_train_tokens", "replay_by_folder": {folder: tokens}}."""
    if not 0 <= fraction < 1:
        raise ValueError(f"run.replay_fraction must be in [0, 1), not {fraction}")
    out_dir = Path(out_dir)
    new_tokens = sum(len(load_tokens(p)) for p in own_train_shards(out_dir))
    target = round(new_tokens * fraction / (1 - fraction))
    pool: list[tuple[Path, int, int]] = []
    for folder in map(Path, earlier):
        shards = own_train_shards(folder)
        if not folder.is_dir() or not shards:
            raise ValueError(f"run.replay_from: {folder} holds no train token shards")
        for path in shards:
            pool += [(path, s, e) for s, e in _documents(np.asarray(load_tokens(path)), eot_id)]
    order = np.random.default_rng(seed).permutation(len(pool))
    by_folder: dict[str, int] = {str(f): 0 for f in earlier}
    taken = documents = 0
    opened: dict[Path, np.ndarray] = {}
    with TokenShardWriter(out_dir, REPLAY_PREFIX, vocab_size, tokens_per_shard) as writer:
        for index in order:
            if taken >= target:
                break
            path, start, end = pool[index]
            tokens = opened.setdefault(path, load_tokens(path))
            writer.write(np.asarray(tokens[start:end]))
            taken += end - start
            documents += 1
            by_folder[str(path.parent)] = by_folder.get(str(path.parent), 0) + end - start
    return {
        "replay_tokens": taken,
        "replay_documents": documents,
        "new_train_tokens": new_tokens,
        "replay_by_folder": by_folder,
    }
