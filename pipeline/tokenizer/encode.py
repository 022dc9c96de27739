"""Encoding documents into train and val token shards, in parallel, byte-identically.

In: a folder of document shards (`part-*.parquet`), a `tokenizer.json` and a `ShardsConfig`.
Out, in `out_dir`: `train-00000.bin`, ... and `val-00000.bin`, ... in the format of
`pipeline.tokenizer.token_shards` (each document's ids followed by the end-of-text id), and a
manifest body with per-split documents, tokens, UTF-8 bytes and tokenizer measures.

How it runs:
- The documents are cut into units of work: runs of consecutive Parquet row groups of about
  `shards.docs_per_unit` documents. `executor.map` encodes the units (in this process or in
  worker processes); each unit writes its own raw part files (`.parts/00007-train.bin`, ...).
  The parts are then concatenated in unit order into shards of `tokens_per_shard` ids, so the
  shards are byte-identical for any executor, number of workers, or unit size.
- Which split a document goes to: `pipeline.tokenizer.splits` (a hash of its id).
- The encoder (`pipeline.tokenizer.text_encoder`): tiktoken when the tokenizer can be expressed
  in it (`shards.encoder: auto`), else `tokenizers`. In `auto`, a sample of documents is also
  encoded with `tokenizers` (those whose id hashes to 0 modulo k, with k chosen so that about
  `CHECKED_DOCUMENTS` are, never fewer than 1 in 100, and all of a small corpus); if any ids
  differ, all units are encoded again with `tokenizers`. The sample depends on the ids alone, so
  the choice (recorded as `stats.encoder`) is the same on every run.
- Token counts include the end-of-text separators, as the shards do: `bytes_per_token_val` is
  the ratio the evaluation's bits per byte needs. The share of the vocabulary used is measured
  on both streams, words per token on val (see `pipeline.tokenizer.metrics`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline.config import ShardsConfig
from pipeline.documents import shard_paths
from pipeline.parallel import Executor, SerialExecutor
from pipeline.special_tokens import EOT_TOKEN
from pipeline.tokenizer.metrics import TokenTally, count_words, utf8_bytes
from pipeline.tokenizer.mixture import plan_copies
from pipeline.tokenizer.splits import SPLITS, DocumentSplit
from pipeline.tokenizer.text_encoder import (
    TextEncoder,
    cached_encoder,
    first_difference,
    tokenizer_file,
)
from pipeline.tokenizer.token_shards import TokenShardWriter, dtype_for_vocab, split_paths

CHECKED_DOCUMENTS = 200  # auto encoder: documents also encoded with `tokenizers` (about)
MAX_CHECK_ONE_IN = 100  # and never fewer than 1 in 100 documents
COPY_CHUNK_TOKENS = 1 << 24  # tokens per read when concatenating parts into shards
PARTS_DIR = ".parts"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodeUnit:
    """Consecutive row groups of one document shard, and everything needed to encode them."""

    index: int
    path: str
    row_groups: tuple[int, ...]
    tokenizer: str
    parts_dir: str
    split: DocumentSplit
    backend: str  # "tokenizers" or "tiktoken"
    check_one_in: int  # compare 1 in k documents with `tokenizers`; 0: none
    threads: int
    batch_size: int
    mixture: bool = False  # also record each train document's source, id and token count

    def part(self, split: str) -> Path:
        return Path(self.parts_dir) / f"{self.index:05d}-{split}.bin"

    def train_documents(self) -> Path:
        return Path(self.parts_dir) / f"{self.index:05d}-train-documents.parquet"


@dataclass
class UnitResult:
    tallies: dict[str, TokenTally]
    checked: int = 0  # documents whose tiktoken ids were compared with `tokenizers`
    mismatch: str | None = None  # why tiktoken's ids were not trusted, if they were not


def plan_units(docs_dir: Path, docs_per_unit: int) -> list[tuple[str, tuple[int, ...]]]:
    """(shard path, row groups) runs of about `docs_per_unit` documents, in document order."""
    units = []
    for path in shard_paths(docs_dir):
        metadata = pq.ParquetFile(path).metadata
        group: list[int] = []
        rows = 0
        for row_group in range(metadata.num_row_groups):
            group.append(row_group)
            rows += metadata.row_group(row_group).num_rows
            if rows >= docs_per_unit:
                units.append((str(path), tuple(group)))
                group, rows = [], 0
        if group:
            units.append((str(path), tuple(group)))
    return units


def _sampled(doc_id: str, one_in: int) -> bool:
    # crc32, not the split hash, so the sample is spread over both splits alike
    return zlib.crc32(doc_id.encode("utf-8")) % one_in == 0


def encode_unit(unit: EncodeUnit) -> UnitResult:
    """Encode one unit's documents into its part files; return its per-split tallies."""
    if multiprocessing.parent_process() is not None:
        # A worker process: share the cores with the other workers instead of each taking all.
        os.environ.setdefault("RAYON_NUM_THREADS", str(unit.threads))
    encoder = cached_encoder(unit.tokenizer, unit.backend, unit.threads)
    eot_id = encoder.token_id(EOT_TOKEN)
    dtype = dtype_for_vocab(encoder.vocab_size)
    tallies = {split: TokenTally(encoder.vocab_size) for split in SPLITS}
    handles = {split: unit.part(split).open("wb") for split in SPLITS}
    checked = 0
    train_documents: dict[str, list] = {"source": [], "id": [], "tokens": []}
    columns = ["id", "text", "source"] if unit.mixture else ["id", "text"]
    try:
        batches = pq.ParquetFile(unit.path).iter_batches(
            batch_size=unit.batch_size, row_groups=list(unit.row_groups), columns=columns
        )
        for batch in batches:
            doc_ids = batch.column(0).to_pylist()
            texts = [text or "" for text in batch.column(1).to_pylist()]
            n_bytes = utf8_bytes(batch.column(1))
            encoded = encoder.encode_batch(texts)
            if unit.check_one_in:
                sample = [
                    i for i, doc_id in enumerate(doc_ids) if _sampled(doc_id, unit.check_one_in)
                ]
                checked += len(sample)
                mismatch = _compare(encoder, sample, doc_ids, texts, encoded)
                if mismatch:
                    return UnitResult(tallies, checked, mismatch)
            sides = np.array([unit.split.split_of(doc_id) == "val" for doc_id in doc_ids])
            for split, members in (("train", ~sides), ("val", sides)):
                picked = np.flatnonzero(members)
                if not len(picked):
                    continue
                flat: list[int] = []
                for i in picked:
                    flat.extend(encoded[i])
                    flat.append(eot_id)
                ids = np.array(flat, dtype=dtype)
                handles[split].write(ids.tobytes())
                if unit.mixture and split == "train":
                    sources = batch.column(2).to_pylist()
                    train_documents["source"].extend(sources[i] for i in picked)
                    train_documents["id"].extend(doc_ids[i] for i in picked)
                    train_documents["tokens"].extend(len(encoded[i]) + 1 for i in picked)
                # words (a Python pass over the text) for val only, where the measure is read
                words = count_words([texts[i] for i in picked]) if split == "val" else None
                tallies[split].add(ids, len(picked), n_bytes[picked].sum(), words)
    finally:
        for handle in handles.values():
            handle.close()
    if unit.mixture:
        pq.write_table(pa.table(train_documents), unit.train_documents())
    return UnitResult(tallies, checked)


def _compare(
    encoder: TextEncoder,
    sample: list[int],
    doc_ids: list[str],
    texts: list[str],
    encoded: list[list[int]],
) -> str | None:
    if not sample:
        return None
    expected = encoder.encode_batch_with_tokenizers([texts[i] for i in sample])
    for i, want in zip(sample, expected, strict=True):
        at = first_difference(encoded[i], want)
        if at is not None:
            return f"document {doc_ids[i]}: tiktoken and tokenizers differ at token {at}"
    return None


def _run_units(units: list[EncodeUnit], executor: Executor) -> list[UnitResult]:
    if len(units) > 1 and executor.workers > 1:
        return executor.map(encode_unit, units)
    # one process: a progress bar per unit
    return [encode_unit(unit) for unit in tqdm(units, unit="unit", desc="encode", disable=None)]


def write_token_shards(
    docs_dir: Path,
    tokenizer_path: Path,
    out_dir: Path,
    cfg: ShardsConfig,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Encode every document in `docs_dir` into train/val token shards in `out_dir`.

    Returns {"counts": {"train_documents", "val_documents", "train_tokens", "val_tokens",
    "train_shards", "val_shards"}, "stats": {"train_bytes", "bytes_per_token_val",
    "words_per_token_val", "vocab_used_fraction_train", ..., "vocab_size", "eot_id", "dtype",
    "encoder", ...}}.
    """
    docs_dir, out_dir = Path(docs_dir), Path(out_dir)
    executor = executor or SerialExecutor()
    threads = max(1, (os.cpu_count() or 1) // max(1, executor.workers))
    encoder, fallback_reason = _choose_encoder(tokenizer_file(tokenizer_path), cfg.encoder, threads)
    eot_id = encoder.token_id(EOT_TOKEN)
    if eot_id is None:
        raise ValueError(f"{tokenizer_path}: tokenizer has no {EOT_TOKEN} token")
    vocab_size = encoder.vocab_size

    planned = plan_units(docs_dir, cfg.docs_per_unit)
    total = sum(pq.ParquetFile(path).metadata.num_rows for path in shard_paths(docs_dir))
    if total == 0:
        raise ValueError(f"{docs_dir}: no documents to encode")
    check_one_in = min(MAX_CHECK_ONE_IN, max(1, total // CHECKED_DOCUMENTS))
    split = DocumentSplit.for_documents(docs_dir, cfg)

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:  # shards left by an earlier, interrupted run would mix into this one
        for stale in split_paths(out_dir, name):
            stale.unlink()
    parts_dir = out_dir / PARTS_DIR
    shutil.rmtree(parts_dir, ignore_errors=True)
    parts_dir.mkdir()

    def units_for(backend: str) -> list[EncodeUnit]:
        return [
            EncodeUnit(
                index=i,
                path=path,
                row_groups=groups,
                tokenizer=str(encoder.path),
                parts_dir=str(parts_dir),
                split=split,
                backend=backend,
                check_one_in=check_one_in if backend == "tiktoken" and cfg.encoder == "auto" else 0,
                threads=threads,
                batch_size=cfg.batch_size,
                mixture=cfg.mixture is not None,
            )
            for i, (path, groups) in enumerate(planned)
        ]

    backend = encoder.backend
    results = _run_units(units_for(backend), executor)
    checked = sum(r.checked for r in results)
    mismatches = [r.mismatch for r in results if r.mismatch]
    if mismatches:
        log.warning("tiktoken disagrees with tokenizers (%s): encoding again", mismatches[0])
        backend, fallback_reason = "tokenizers", mismatches[0]
        results = _run_units(units_for(backend), executor)

    tallies = {name: TokenTally(vocab_size) for name in SPLITS}
    for result in results:
        for name in SPLITS:
            tallies[name].merge(result.tallies[name])
    mixture = None
    copies = None
    if cfg.mixture is not None:
        documents = pa.concat_tables(pq.read_table(u.train_documents()) for u in units_for(backend))
        copies, mixture = plan_copies(
            documents["source"].to_pylist(),
            documents["id"].to_pylist(),
            documents["tokens"].to_numpy(),
            cfg.mixture,
        )
    shard_names = _concatenate_parts(
        units_for(backend), out_dir, vocab_size, cfg.tokens_per_shard, copies
    )
    shutil.rmtree(parts_dir)

    stats: dict[str, Any] = {}
    for name in SPLITS:
        summary = tallies[name].summary(suffix=f"_{name}")
        stats[f"{name}_bytes"] = summary.pop(f"bytes_{name}")
        if f"words_{name}" in summary:
            stats[f"{name}_words"] = summary.pop(f"words_{name}")
        for key in ("documents", "tokens", "tokens_per_word"):
            summary.pop(f"{key}_{name}", None)
        stats.update(summary)
    train_documents = tallies["train"].documents
    train_tokens = tallies["train"].tokens
    if mixture is not None:  # the stream pretraining reads: sampled, repeated (the val as is)
        stats["train_tokens_before_mixture"] = train_tokens
        train_documents = int(copies.sum())
        train_tokens = mixture["train_tokens"]
    body = {
        "counts": {
            "train_documents": train_documents,
            "val_documents": tallies["val"].documents,
            "train_tokens": train_tokens,
            "val_tokens": tallies["val"].tokens,
            "train_shards": len(shard_names["train"]),
            "val_shards": len(shard_names["val"]),
        },
        "stats": {
            **stats,
            "vocab_size": vocab_size,
            "eot_id": eot_id,
            "dtype": dtype_for_vocab(vocab_size).name,
            "val_fraction": cfg.val_fraction,
            "encoder": backend,
            "encoder_fallback_reason": fallback_reason,
            "encoder_checked_documents": checked,
            "shards": shard_names,
        },
    }
    if mixture is not None:
        body["mixture"] = mixture
    return body


def _choose_encoder(tokenizer: Path, choice: str, threads: int) -> tuple[TextEncoder, str]:
    """The encoder for `shards.encoder`, and why it is not tiktoken when `auto` wanted it.

    `cached_encoder`: in one process, the units reuse this very encoder (and its tiktoken ranks).
    """
    if choice == "tokenizers":
        return cached_encoder(str(tokenizer), "tokenizers", threads), ""
    try:
        return cached_encoder(str(tokenizer), "tiktoken", threads), ""
    except ValueError as exc:
        if choice == "tiktoken":
            raise
        return cached_encoder(str(tokenizer), "tokenizers", threads), str(exc)


def _concatenate_parts(
    units: list[EncodeUnit],
    out_dir: Path,
    vocab_size: int,
    tokens_per_shard: int,
    copies: np.ndarray | None = None,
) -> dict[str, list[str]]:
    """Stream every unit's part files, in unit order, into the split's numbered shards.

    With `copies` (a mixture: copies of each train document, in document order), the train
    stream is written in passes: pass k holds, in document order, the documents with more
    than k copies, so a repeated document comes back only after all of the pass before.
    """
    dtype = dtype_for_vocab(vocab_size)
    names = {}
    for name in SPLITS:
        with TokenShardWriter(out_dir, name, vocab_size, tokens_per_shard) as writer:
            if name == "train" and copies is not None:
                _write_mixed(units, writer, dtype, copies)
            else:
                for unit in units:
                    with unit.part(name).open("rb") as part:
                        while len(chunk := np.fromfile(part, dtype=dtype, count=COPY_CHUNK_TOKENS)):
                            writer.write(chunk)
        names[name] = [path.name for path in writer.paths]
    return names


def _write_mixed(
    units: list[EncodeUnit], writer: TokenShardWriter, dtype: np.dtype, copies: np.ndarray
) -> None:
    passes = int(copies.max()) if len(copies) else 0
    for k in range(passes):
        first = 0  # the unit's first document in the global document order
        for unit in units:
            lengths = pq.read_table(unit.train_documents(), columns=["tokens"])["tokens"]
            lengths = lengths.to_numpy().astype(np.int64)
            chosen = copies[first : first + len(lengths)] > k
            first += len(lengths)
            if chosen.any():
                tokens = np.fromfile(unit.part("train"), dtype=dtype)
                writer.write(tokens[np.repeat(chosen, lengths)])
