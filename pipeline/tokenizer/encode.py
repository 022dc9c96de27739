"""Encoding documents into train and val token shards.

In: a folder of document shards (`part-*.parquet`), a trained `tokenizer.json` and a
`ShardsConfig`. Out, in `out_dir`: `train-00000.bin`, ... and `val-00000.bin`, ... in the
format of `pipeline.tokenizer.token_shards` (each document's ids followed by the end-of-text
id), and a manifest body with per-split document, token and UTF-8 byte counts.

A document goes to val when a hash of its id falls below `val_fraction`: the split depends on
the id alone, never on position, so the same document lands in the same split on every run and
never in both. Texts are encoded in batches with `encode_batch`, which runs on all cores.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.config import ShardsConfig
from pipeline.documents import iter_batches
from pipeline.tokenizer.token_shards import TokenShardWriter, split_paths
from pipeline.tokenizer.train_bpe import EOT_TOKEN, count_documents, load_tokenizer

CODE_VERSION = 1  # bump when the shards would change for the same input and config
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
        return {lowest[1]: "train"}
    overrides = {}
    if not has_val:
        overrides[lowest[1]] = "val"
    if not has_train:
        overrides[highest[1]] = "train"
    return overrides


@dataclass
class _SplitCounts:
    documents: int = 0
    tokens: int = 0
    text_bytes: int = 0


def write_token_shards(
    docs_dir: Path, tokenizer_path: Path, out_dir: Path, cfg: ShardsConfig
) -> dict[str, Any]:
    """Encode every document in `docs_dir` into train/val token shards in `out_dir`.

    Returns {"counts": {"train_documents", "val_documents", "train_tokens", "val_tokens", ...},
    "stats": {"train_bytes", "val_bytes", "bytes_per_token_train", "bytes_per_token_val",
    "vocab_size", "eot_id", "dtype"}}. Token counts include the end-of-text separators, as the
    shards do; bytes are the UTF-8 bytes of the document texts.
    """
    docs_dir, out_dir = Path(docs_dir), Path(out_dir)
    tokenizer = load_tokenizer(tokenizer_path)
    eot_id = tokenizer.token_to_id(EOT_TOKEN)
    if eot_id is None:
        raise ValueError(f"{tokenizer_path}: tokenizer has no {EOT_TOKEN} token")
    # A document whose text contains "<|endoftext|>" (or another special token) must not put a
    # control token in the stream: the literal text is encoded as ordinary bytes instead.
    tokenizer.encode_special_tokens = True
    vocab_size = tokenizer.get_vocab_size()
    # encode_batch_fast skips computing character offsets, which the shards do not keep.
    encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)

    total = count_documents(docs_dir)
    if total == 0:
        raise ValueError(f"{docs_dir}: no documents to encode")
    overrides = plan_split_overrides(docs_dir, cfg.val_fraction)
    if total == 1:
        log.warning("%s holds one document: it goes to train and val stays empty", docs_dir)

    out_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:  # shards left by an earlier, interrupted run would mix into this one
        for stale in split_paths(out_dir, split):
            stale.unlink()

    counts = {split: _SplitCounts() for split in SPLITS}
    writers = {
        split: TokenShardWriter(out_dir, split, vocab_size, cfg.tokens_per_shard)
        for split in SPLITS
    }
    try:
        with tqdm(total=total, unit="doc", desc="encode", disable=None) as progress:
            for batch in iter_batches(docs_dir, batch_size=cfg.batch_size, columns=["id", "text"]):
                ids, texts = batch.column(0).to_pylist(), batch.column(1).to_pylist()
                texts = [text or "" for text in texts]
                pending: dict[str, list[int]] = {split: [] for split in SPLITS}
                for doc_id, text, encoding in zip(ids, texts, encode_batch(texts), strict=True):
                    split = overrides.get(doc_id) or split_by_hash(doc_id, cfg.val_fraction)
                    pending[split].extend(encoding.ids)
                    pending[split].append(eot_id)
                    counts[split].documents += 1
                    counts[split].tokens += len(encoding.ids) + 1
                    counts[split].text_bytes += len(text.encode("utf-8"))
                for split, token_ids in pending.items():
                    if token_ids:
                        writers[split].write(np.asarray(token_ids, dtype=writers[split].dtype))
                progress.update(len(ids))
    finally:
        for writer in writers.values():
            writer.close()
    shard_names = {split: [path.name for path in writers[split].paths] for split in SPLITS}

    def per_token(split: str) -> float | None:
        tokens = counts[split].tokens
        return counts[split].text_bytes / tokens if tokens else None

    return {
        "counts": {
            "train_documents": counts["train"].documents,
            "val_documents": counts["val"].documents,
            "train_tokens": counts["train"].tokens,
            "val_tokens": counts["val"].tokens,
            "train_shards": len(shard_names["train"]),
            "val_shards": len(shard_names["val"]),
        },
        "stats": {
            "train_bytes": counts["train"].text_bytes,
            "val_bytes": counts["val"].text_bytes,
            "bytes_per_token_train": per_token("train"),
            "bytes_per_token_val": per_token("val"),
            "vocab_size": vocab_size,
            "eot_id": eot_id,
            "dtype": writers["train"].dtype.name,
            "val_fraction": cfg.val_fraction,
            "shards": shard_names,
        },
    }
