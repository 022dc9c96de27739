"""Which documents are validation documents: a rule on document ids alone.

In: a folder of document shards and a `ShardsConfig`. Out: a `DocumentSplit` that names the split
("train" or "val") of any document id, and `split_fields`, the config fields that decide it.

A document goes to val when a hash of its id falls below `val_fraction`: the split depends on
the id alone, never on position, so the same document lands in the same split on every run,
whatever order or shard it comes in, and never in both. The tokenizer stage uses the same rule
to train on the train documents only and to measure the tokenizer on the held-out ones; the
shards stage uses it to write `train-*.bin` and `val-*.bin`. (Another rule, such as nanoGPT's
"the last 10% of a file", plugs in here: give `DocumentSplit` the rule and `split_fields` its
fields, and both stages follow.)
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import ShardsConfig
from pipeline.documents import iter_batches

SPLITS = ("train", "val")

log = logging.getLogger(__name__)


def id_hash_fraction(doc_id: str) -> float:
    """A document id mapped to [0, 1), uniformly and the same on every machine and run."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_by_hash(doc_id: str, val_fraction: float) -> str:
    return "val" if id_hash_fraction(doc_id) < val_fraction else "train"


def plan_split_overrides(docs_dir: Path, val_fraction: float) -> dict[str, str]:
    """Ids whose split the hash rule must not decide, so neither split is empty.

    On a tiny corpus the hash can put every document on one side. Then the document with the
    smallest hash goes to val (or the one with the largest to train): still a function of the
    ids alone. One document only: it goes to train, and val stays empty. Reads the id column.
    """
    lowest: tuple[float, str] | None = None
    highest: tuple[float, str] | None = None
    has_val = has_train = False
    for batch in iter_batches(docs_dir, columns=["id"]):
        for doc_id in batch.column(0).to_pylist():
            fraction = id_hash_fraction(doc_id)
            has_val |= fraction < val_fraction
            has_train |= fraction >= val_fraction
            lowest = min(lowest, (fraction, doc_id)) if lowest else (fraction, doc_id)
            highest = max(highest, (fraction, doc_id)) if highest else (fraction, doc_id)
    if lowest is None or highest is None:
        return {}
    if lowest[1] == highest[1]:  # one distinct id: nothing to split
        log.warning("%s holds one document: it goes to train and val stays empty", docs_dir)
        return {lowest[1]: "train"}
    overrides = {}
    if not has_val:
        overrides[lowest[1]] = "val"
    if not has_train:
        overrides[highest[1]] = "train"
    return overrides


@dataclass(frozen=True)
class DocumentSplit:
    """The split of each document id: the hash rule, with the few tiny-corpus overrides."""

    val_fraction: float
    overrides: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_documents(cls, docs_dir: Path, cfg: ShardsConfig) -> DocumentSplit:
        if cfg.split == "position":
            # the cut is inside the token stream (pipeline.tokenizer.position_split): no
            # document is held out as a whole, so every one counts as train here
            return cls(0.0)
        return cls(cfg.val_fraction, plan_split_overrides(docs_dir, cfg.val_fraction))

    def split_of(self, doc_id: str) -> str:
        return self.overrides.get(doc_id) or split_by_hash(doc_id, self.val_fraction)


def split_fields(cfg: ShardsConfig) -> dict[str, Any]:
    """The config fields that decide which documents are held out (part of fingerprints)."""
    fields: dict[str, Any] = {"val_fraction": cfg.val_fraction}
    if cfg.split != "hash":  # only when set, so the hash split's fingerprints stay as they were
        fields["split"] = cfg.split
    return fields
