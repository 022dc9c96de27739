"""Source mixtures of the train split: per-document token counts in, copies per document out.

In: for every train document, in document order, its source, its id and its token count (end
of text included); and a `MixtureConfig` (per-source weights, with an optional total, or
per-source token budgets). Out: how many times each document goes into the train stream
(0: left out, 1: once, 2+: repeated), and a report per source (tokens available, asked,
written, share of the stream, sampling rate).

How a source reaches its target T from the A tokens it has: every document is written
floor(T / A) times, and the rest, T - floor(T / A) * A tokens, comes from one more copy of a
prefix of its documents ordered by a hash of their ids (the prefix whose tokens are nearest the
rest). So the choice depends on the ids alone (the same documents in every run, whatever the
order or the number of workers), and a source's tokens are within one document of its target.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from typing import Any

import numpy as np

from pipeline.config import MixtureConfig


class MixtureError(ValueError):
    """A mixture that the documents cannot give; the message names the key at fault."""


def _order_key(doc_id: str) -> bytes:
    return hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8, person=b"mixture").digest()


def targets(available: dict[str, int], cfg: MixtureConfig) -> dict[str, int]:
    """Train tokens wanted per source; MixtureError when a source lacks a value or is unknown."""
    values = cfg.weights if cfg.weights is not None else cfg.tokens
    key = "weights" if cfg.weights is not None else "tokens"
    assert values is not None
    # A source asked for but absent (an earlier stage removed all of it) is an error, unless
    # it was asked to be left out anyway.
    unknown = sorted(s for s in set(values) - set(available) if values[s] > 0)
    missing = sorted(set(available) - set(values))
    if unknown:
        raise MixtureError(
            f"shards.mixture.{key}: no train documents of source(s) {', '.join(unknown)} "
            f"(sources in the documents: {', '.join(sorted(available))})"
        )
    if missing:
        raise MixtureError(
            f"shards.mixture.{key}: no value for source(s) {', '.join(missing)} (give each "
            f"source of the documents a value; 0 leaves one out)"
        )
    if cfg.tokens is not None:
        return {source: int(n) for source, n in cfg.tokens.items() if source in available}
    total = cfg.total_tokens if cfg.total_tokens is not None else sum(available.values())
    weight_sum = sum(values.values())
    return {s: int(round(total * w / weight_sum)) for s, w in values.items() if s in available}


def plan_copies(
    sources: list[str], ids: list[str], tokens: np.ndarray, cfg: MixtureConfig
) -> tuple[np.ndarray, dict[str, Any]]:
    """Copies of each train document (in the given order) and the per-source report."""
    tokens = np.asarray(tokens, dtype=np.int64)
    by_source: dict[str, list[int]] = defaultdict(list)
    for position, source in enumerate(sources):
        by_source[source].append(position)
    available = {s: int(tokens[p].sum()) for s, p in by_source.items()}
    wanted = targets(available, cfg)
    copies = np.zeros(len(sources), dtype=np.int32)
    report: dict[str, Any] = {}
    for source, positions in sorted(by_source.items()):
        target = wanted[source]
        have = available[source]
        if target > 0 and have == 0:
            raise MixtureError(f"shards.mixture: source {source} has no train tokens")
        full = target // have if have else 0
        rest = target - full * have
        members = np.array(sorted(positions, key=lambda p: _order_key(ids[p])), dtype=np.int64)
        copies[members] = full
        cumulative = np.cumsum(tokens[members])
        # the prefix whose tokens are nearest the rest (k documents: cumulative[k - 1])
        k = int(np.searchsorted(cumulative, rest))
        before = int(cumulative[k - 1]) if k else 0
        if k < len(members) and cumulative[k] - rest < rest - before:
            k += 1
        copies[members[:k]] += 1
        written = int((copies[members] * tokens[members]).sum())
        report[source] = {
            "documents": len(members),
            "available_tokens": have,
            "target_tokens": target,
            "tokens": written,
            "rate": round(target / have, 4) if have else 0.0,
            "documents_written": int(copies[members].sum()),
        }
    total = sum(r["tokens"] for r in report.values()) or 1
    asked = _asked_shares(cfg, wanted)
    for source, entry in report.items():
        entry["share"] = round(entry["tokens"] / total, 6)
        entry["asked_share"] = round(asked[source], 6)
    worst = max((abs(e["share"] - e["asked_share"]) for e in report.values()), default=0.0)
    return copies, {
        "sources": report,
        "train_tokens": total if report else 0,
        "max_share_error": round(worst, 6),
        "max_budget_error": round(
            max(
                (
                    abs(e["tokens"] - e["target_tokens"]) / e["target_tokens"]
                    for e in report.values()
                    if e["target_tokens"]
                ),
                default=0.0,
            ),
            6,
        ),
    }


def _asked_shares(cfg: MixtureConfig, wanted: dict[str, int]) -> dict[str, float]:
    if cfg.weights is not None:
        weight_sum = sum(cfg.weights.values())
        return {s: w / weight_sum for s, w in cfg.weights.items() if s in wanted}
    total = sum(wanted.values())
    return {s: (n / total if total else math.nan) for s, n in wanted.items()}
