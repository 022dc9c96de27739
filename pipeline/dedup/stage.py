"""The dedup stage as a map-reduce: document shards in, shards without duplicates out.

In: a folder of document shards and a `DedupConfig` (and optionally an earlier dedup output to
dedup against). Out: the kept documents as shards (`part-<unit>-<k>.parquet`, unchanged unless
repeated spans were cut), `duplicates.parquet` (id, source, duplicate_of, kind) listing every
removed document in document order, `signatures/` (the compact per-document keys a later run
can dedup against), and a manifest body.

Documents are ordered globally by (earlier corpora first, then input shard, then row), and each
duplicate group keeps its first document in that order, so the kept set is the same whatever
ran the units and however many workers there were. The phases (each a map over units, run by
the stage's executor, or one reduce in this process):

1. signatures (one unit per shard): a 128-bit digest of the normalized text (exact dedup) and
   the MinHash LSH band keys (near-dup), written to `signatures/gNNNN/part-<unit>.parquet`;
   span keys too when `repeated_spans` is on.
2. exact (reduce): sort the digests; every later copy points at the first.
3. buckets (one unit per band): sort one band key column; documents sharing a key become
   candidate pairs (first of the bucket, other), written as small edge files.
4. components (reduce): union-find over the pairs; each component keeps its smallest document.
5. spans (one unit per hash partition, optional): the first occurrence of each line/paragraph
   among the kept documents stays, later ones are cut.
6. filter (one unit per shard): write the kept documents and the duplicate rows.

Memory: no phase holds texts of more than one shard; the reduces hold a few 8-byte numbers per
document (digests, one band column, the nodes that have a pair).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import DedupConfig
from pipeline.dedup.components import component_arrays
from pipeline.dedup.exact import text_digest
from pipeline.dedup.minhash import MinHasher
from pipeline.dedup.spans import remove_spans, span_keys
from pipeline.documents import ShardWriter, shard_paths
from pipeline.parallel import Executor, Log, SerialExecutor, describe, timed_map

# the union-find's answer: (document indices in a near-duplicate group, ascending; the one
# each group keeps), see pipeline.dedup.components.component_arrays
Roots = tuple[np.ndarray, np.ndarray]
DUPLICATES_FILE = "duplicates.parquet"
DUPLICATES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("duplicate_of", pa.string()),  # the kept (or earlier-corpus) document; null for spans
        ("kind", pa.string()),  # exact | near | spans
    ]
)
SIGNATURES_DIR = "signatures"
INDEX_FILE = "index.json"
WORK_DIR = "_dedup_work"
SPAN_PARTITIONS = 8  # any number gives the same result; more means less memory per unit
BATCH_ROWS = 2000
EXAMPLES = 3


def band_column(band: int) -> str:
    return f"band_{band:03d}"


def signature_schema(cfg: DedupConfig) -> pa.Schema:
    fields = [("id", pa.string()), ("digest_hi", pa.uint64()), ("digest_lo", pa.uint64())]
    if cfg.method == "minhash":
        fields += [(band_column(b), pa.uint64()) for b in range(cfg.num_bands)]
    return pa.schema(fields)


def index_params(cfg: DedupConfig) -> dict[str, Any]:
    """What must match for two runs' signatures to be comparable."""
    params: dict[str, Any] = {"method": cfg.method, "digest": "blake2b-128(dedup_key)"}
    if cfg.method == "minhash":
        params |= {
            "ngram_size": cfg.ngram_size,
            "num_bands": cfg.num_bands,
            "rows_per_band": cfg.rows_per_band,
            "seed": cfg.seed,
        }
    return params


# ------------------------------------------------------------------------ units of work


@dataclass(frozen=True)
class ShardUnit:
    index: int
    shard: str
    out_dir: str
    generation: str
    config: DedupConfig


@dataclass(frozen=True)
class BandUnit:
    band: int
    files: tuple[str, ...]
    work: str


@dataclass(frozen=True)
class SpanUnit:
    partition: int
    partitions: int
    units: int
    work: str


def _signature_path(out_dir: Path, generation: str, index: int) -> Path:
    return out_dir / SIGNATURES_DIR / generation / f"part-{index:05d}.parquet"


def signature_shard(unit: ShardUnit) -> int:
    """Phase 1: digests, band keys (and span keys) of one shard's documents; rows written."""
    cfg = unit.config
    out_dir = Path(unit.out_dir)
    path = _signature_path(out_dir, unit.generation, unit.index)
    path.parent.mkdir(parents=True, exist_ok=True)
    hasher = (
        MinHasher(cfg.ngram_size, cfg.num_bands, cfg.rows_per_band, cfg.seed)
        if cfg.method == "minhash"
        else None
    )
    schema = signature_schema(cfg)
    spans: list[dict[str, Any]] = []
    rows = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for batch in pq.ParquetFile(unit.shard).iter_batches(
            batch_size=BATCH_ROWS, columns=["id", "text"]
        ):
            ids = batch.column(0).to_pylist()
            texts = [t or "" for t in batch.column(1).to_pylist()]
            digests = np.frombuffer(b"".join(map(text_digest, texts)), dtype=">u8").reshape(-1, 2)
            columns: dict[str, Any] = {
                "id": ids,
                "digest_hi": digests[:, 0].astype(np.uint64),
                "digest_lo": digests[:, 1].astype(np.uint64),
            }
            if hasher is not None:
                keys, has_shingles = hasher.text_band_keys(texts)
                for band in range(cfg.num_bands):
                    columns[band_column(band)] = pa.array(keys[:, band], mask=~has_shingles)
            writer.write_table(pa.table(columns, schema=schema))
            if cfg.repeated_spans != "off":
                for offset, text in enumerate(texts):
                    for position, key in enumerate(span_keys(text, cfg.repeated_spans)):
                        if key:
                            spans.append({"row": rows + offset, "span": position, "key": key})
            rows += len(texts)
    if cfg.repeated_spans != "off":
        work = out_dir / WORK_DIR
        table = pa.Table.from_pylist(
            spans,
            schema=pa.schema([("row", pa.int64()), ("span", pa.int32()), ("key", pa.int64())]),
        )
        pq.write_table(table, work / f"spans-{unit.index:05d}.parquet")
    return rows


def _read_uint64(files: list[str] | tuple[str, ...], column: str) -> tuple[np.ndarray, np.ndarray]:
    """A uint64 column over files, in order, and its validity (False where null)."""
    values, valid = [], []
    for path in files:
        chunked = pq.read_table(path, columns=[column]).column(0)
        valid.append(np.asarray(pc.is_valid(chunked)))
        values.append(np.asarray(pc.fill_null(chunked, 0), dtype=np.uint64))
    if not values:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=bool)
    return np.concatenate(values), np.concatenate(valid)


def _first_of_groups(order: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """For sorted positions `order` with group starts marked, the first member of each one's
    group (the smallest index, as sorts are stable over increasing indices)."""
    group = np.cumsum(starts) - 1
    return order[np.flatnonzero(starts)][group]


def exact_representatives(files: list[str]) -> np.ndarray:
    """Phase 2: for each document (global index), the first document with the same digest."""
    hi, _ = _read_uint64(files, "digest_hi")
    lo, _ = _read_uint64(files, "digest_lo")
    if not len(hi):
        return np.empty(0, dtype=np.int64)
    order = np.lexsort((np.arange(len(hi)), lo, hi))
    sorted_hi, sorted_lo = hi[order], lo[order]
    starts = np.r_[True, (sorted_hi[1:] != sorted_hi[:-1]) | (sorted_lo[1:] != sorted_lo[:-1])]
    representative = np.empty(len(hi), dtype=np.int64)
    representative[order] = _first_of_groups(order, starts)
    return representative


def band_candidates(unit: BandUnit) -> int:
    """Phase 3: pairs (first of bucket, other) of exact-unique documents sharing this band key."""
    work = Path(unit.work)
    keys, valid = _read_uint64(unit.files, band_column(unit.band))
    representative = np.load(work / "exact_representative.npy")
    eligible = np.flatnonzero(valid & (representative == np.arange(len(keys))))
    order = eligible[np.argsort(keys[eligible], kind="stable")]
    sorted_keys = keys[order]
    starts = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]] if len(order) else np.empty(0, bool)
    firsts = _first_of_groups(order, starts) if len(order) else order
    members = ~starts
    edges = np.stack([firsts[members], order[members]], axis=1).astype(np.int64)
    np.save(work / f"edges-{unit.band:03d}.npy", edges)
    return len(edges)


def _removed_rows(work: Path, index: int) -> pa.Table:
    return pq.read_table(work / f"remove-{index:05d}.parquet")


def span_duplicates(unit: SpanUnit) -> int:
    """Phase 5: in one hash partition, every occurrence of a span key after its first."""
    work = Path(unit.work)
    tables = []
    for index in range(unit.units):
        spans = pq.read_table(work / f"spans-{index:05d}.parquet")
        spans = spans.filter(
            pc.equal(pc.bit_wise_and(spans["key"], unit.partitions - 1), unit.partition)
        )
        removed = _removed_rows(work, index).column("row")
        spans = spans.filter(pc.invert(pc.is_in(spans["row"], removed)))
        tables.append(
            spans.append_column("unit", pa.array(np.full(spans.num_rows, index, np.int32)))
        )
    table = pa.concat_tables(tables) if tables else None
    if table is None or not table.num_rows:
        drop = pa.table(
            {
                "unit": pa.array([], pa.int32()),
                "row": pa.array([], pa.int64()),
                "span": pa.array([], pa.int32()),
            }
        )
    else:
        key = np.asarray(table["key"])
        order = np.argsort(key, kind="stable")  # rows are already in document order
        sorted_key = key[order]
        later = order[np.r_[False, sorted_key[1:] == sorted_key[:-1]]]
        drop = table.select(["unit", "row", "span"]).take(pa.array(np.sort(later)))
    pq.write_table(drop, work / f"span-drop-{unit.partition:03d}.parquet")
    return drop.num_rows


def filter_shard(unit: ShardUnit) -> dict[str, Any]:
    """Phase 6: write one shard's kept documents and its duplicate rows."""
    cfg = unit.config
    out_dir = Path(unit.out_dir)
    work = out_dir / WORK_DIR
    removed = {
        row: (kind, duplicate_of)
        for row, kind, duplicate_of in zip(
            *(
                _removed_rows(work, unit.index).column(c).to_pylist()
                for c in ("row", "kind", "duplicate_of")
            ),
            strict=True,
        )
    }
    cut: dict[int, set[int]] = {}
    if cfg.repeated_spans != "off":
        for path in sorted(work.glob("span-drop-*.parquet")):
            drop = pq.read_table(path, filters=[("unit", "=", unit.index)])
            for row, span in zip(drop["row"].to_pylist(), drop["span"].to_pylist(), strict=True):
                cut.setdefault(row, set()).add(span)
    by_kind: Counter[str] = Counter()
    by_source: Counter[str] = Counter()
    spans_cut = span_chars_cut = 0
    duplicate_rows: list[dict[str, Any]] = []
    row = 0
    with ShardWriter(out_dir, cfg.max_docs_per_shard, prefix=f"part-{unit.index:05d}-") as writer:
        for batch in pq.ParquetFile(unit.shard).iter_batches(batch_size=BATCH_ROWS):
            for doc in batch.to_pylist():
                decision = removed.get(row)
                if decision is None and row in cut:
                    before = doc["text"] or ""
                    doc["text"] = remove_spans(before, cfg.repeated_spans, cut[row])
                    spans_cut += len(cut[row])
                    span_chars_cut += len(before) - len(doc["text"])
                    if len(doc["text"].split()) < max(cfg.span_min_doc_words, 1):
                        decision = ("spans", None)
                row += 1
                if decision is None:
                    writer.write(doc)
                    continue
                by_kind[decision[0]] += 1
                by_source[doc["source"]] += 1
                duplicate_rows.append(
                    {
                        "id": doc["id"],
                        "source": doc["source"],
                        "duplicate_of": decision[1],
                        "kind": decision[0],
                    }
                )
    pq.write_table(
        pa.Table.from_pylist(duplicate_rows, schema=DUPLICATES_SCHEMA),
        work / f"duplicates-{unit.index:05d}.parquet",
    )
    return {
        "input": row,
        "kept": writer.count,
        "by_kind": dict(by_kind),
        "by_source": dict(by_source),
        "spans_cut": spans_cut,
        "span_chars_cut": span_chars_cut,
    }


# ------------------------------------------------------------------------ the reduces


def _previous_files(previous: Path | None, cfg: DedupConfig) -> tuple[list[str], list[Path]]:
    """The signature files of an earlier dedup output (oldest first) and its generation dirs."""
    if previous is None:
        return [], []
    index_path = previous / SIGNATURES_DIR / INDEX_FILE
    if not index_path.is_file():
        raise ValueError(f"dedup.previous: {previous} is not a dedup output with signatures")
    index = json.loads(index_path.read_text(encoding="utf-8"))
    if index["params"] != index_params(cfg):
        raise ValueError(
            f"dedup.previous: {previous} was made with {index['params']}, "
            f"this run uses {index_params(cfg)}; they must match"
        )
    generations = [previous / SIGNATURES_DIR / g for g in index["generations"]]
    files = [str(p) for g in generations for p in sorted(g.glob("part-*.parquet"))]
    return files, generations


def _ids_at(files: list[str], offsets: np.ndarray, wanted: set[int]) -> dict[int, str]:
    """Document ids at some global indices, reading only the files that hold them."""
    found: dict[int, str] = {}
    targets = np.array(sorted(wanted), dtype=np.int64)
    for number, path in enumerate(files):
        low, high = offsets[number], offsets[number + 1]
        here = targets[(targets >= low) & (targets < high)]
        if len(here):
            ids = pq.read_table(path, columns=["id"]).column(0)
            for index, value in zip(
                here.tolist(), ids.take(pa.array(here - low)).to_pylist(), strict=True
            ):
                found[index] = value
    return found


def _kept_of(exact_of: np.ndarray, roots: Roots) -> np.ndarray:
    """The document each one's component keeps: its exact representative's root, or the
    representative itself outside any near-duplicate group. Looked up with arrays: a Python
    int per document (the list this replaced) cost ~70 bytes a document in the reduce."""
    final = exact_of.astype(np.int64, copy=True)
    nodes, kept = roots  # nodes ascending
    if not len(nodes):
        return final
    at = np.minimum(np.searchsorted(nodes, final), len(nodes) - 1)
    hit = nodes[at] == final
    final[hit] = kept[at[hit]]
    return final


def _decide(
    files: list[str],
    rows: list[int],
    first_current: int,
    representative: np.ndarray,
    roots: Roots,
    work: Path,
) -> dict[str, int]:
    """Phase 4's output: per shard, the removed rows with their kind and kept document."""
    sizes = [pq.ParquetFile(f).metadata.num_rows for f in files]
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
    current = np.arange(first_current, len(representative))
    exact_of = representative[current]
    final = _kept_of(exact_of, roots)
    removed = final != current
    ids = _ids_at(files, offsets, set(final[removed].tolist()))
    of_previous = int(np.sum(final[removed] < first_current))
    start = 0
    for index, count in enumerate(rows):
        part = slice(start, start + count)
        mask = removed[part]
        exact = exact_of[part][mask] != current[part][mask]
        table = pa.table(
            {
                "row": pa.array(np.flatnonzero(mask), pa.int64()),
                "kind": pa.array(np.where(exact, "exact", "near").tolist(), pa.string()),
                "duplicate_of": pa.array([ids[f] for f in final[part][mask].tolist()], pa.string()),
            }
        )
        pq.write_table(table, work / f"remove-{index:05d}.parquet")
        start += count
    return {"duplicates_of_previous": of_previous}


def _near_examples(
    shards: list[Path],
    first_current: int,
    representative: np.ndarray,
    roots: Roots,
    rows: list[int],
) -> list[dict[str, Any]]:
    """A few near-duplicate pairs of this run, removed text beside kept text, to judge by eye."""
    offsets = np.concatenate([[0], np.cumsum(rows)]) + first_current
    nodes, kept = roots  # nodes ascending: the first pairs in document order
    shown = (
        (nodes != kept)
        & (nodes >= first_current)
        & (kept >= first_current)
        & (representative[nodes] == nodes)
    )
    pairs = list(
        zip(nodes[shown][:EXAMPLES].tolist(), kept[shown][:EXAMPLES].tolist(), strict=True)
    )

    def text_at(index: int) -> dict[str, Any]:
        shard = int(np.searchsorted(offsets, index, side="right") - 1)
        table = pq.read_table(shards[shard], columns=["id", "text"])
        row = table.slice(index - offsets[shard], 1).to_pylist()[0]
        return row

    examples = []
    for node, root in pairs:
        removed, kept = text_at(node), text_at(root)
        examples.append(
            {
                "id": removed["id"],
                "duplicate_of": kept["id"],
                "removed": (removed["text"] or "")[:200],
                "kept": (kept["text"] or "")[:200],
            }
        )
    return examples


def _link_or_copy(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copy2(path, target / path.name)


def run_dedup(
    in_dir: Path,
    out_dir: Path,
    cfg: DedupConfig,
    executor: Executor | None = None,
    log: Log | None = None,
    previous: Path | None = None,
) -> dict[str, Any]:
    """Drop the duplicates among the documents of `in_dir` (and those already in `previous`,
    an earlier dedup output) into `out_dir`; return the manifest body."""
    executor = executor or SerialExecutor()
    out_dir = Path(out_dir)
    work = out_dir / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    previous = Path(previous) if previous else (Path(cfg.previous) if cfg.previous else None)
    previous_files, previous_generations = _previous_files(previous, cfg)
    generation = f"g{len(previous_generations):04d}"
    shards = shard_paths(in_dir)
    units = [ShardUnit(i, str(p), str(out_dir), generation, cfg) for i, p in enumerate(shards)]
    seconds: dict[str, float] = {}

    rows = timed_map(executor, "signatures", signature_shard, units, seconds, log)
    current_files = [str(_signature_path(out_dir, generation, u.index)) for u in units]
    files = previous_files + current_files
    first_current = sum(pq.ParquetFile(f).metadata.num_rows for f in previous_files)

    representative = timed_map(
        SerialExecutor(), "exact", exact_representatives, [files], seconds, log
    )[0]
    np.save(work / "exact_representative.npy", representative)
    roots: Roots = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
    candidate_pairs = 0
    if cfg.method == "minhash":
        bands = [BandUnit(b, tuple(files), str(work)) for b in range(cfg.num_bands)]
        candidate_pairs = sum(timed_map(executor, "buckets", band_candidates, bands, seconds, log))
        edge_files = [work / f"edges-{b:03d}.npy" for b in range(cfg.num_bands)]
        edges = np.concatenate([np.load(p) for p in edge_files]) if edge_files else np.empty((0, 2))
        found = timed_map(SerialExecutor(), "components", component_arrays, [edges], seconds, log)
        roots, edges = found[0], None
    decided = _decide(files, rows, first_current, representative, roots, work)

    if cfg.repeated_spans != "off":
        span_units = [
            SpanUnit(p, SPAN_PARTITIONS, len(units), str(work)) for p in range(SPAN_PARTITIONS)
        ]
        timed_map(executor, "spans", span_duplicates, span_units, seconds, log)
    results = timed_map(executor, "filter", filter_shard, units, seconds, log)

    with pq.ParquetWriter(out_dir / DUPLICATES_FILE, DUPLICATES_SCHEMA) as writer:
        for unit in units:
            writer.write_table(pq.read_table(work / f"duplicates-{unit.index:05d}.parquet"))
    examples = (
        _near_examples(shards, first_current, representative, roots, rows) if len(roots[0]) else []
    )
    for folder in previous_generations:
        _link_or_copy(folder, out_dir / SIGNATURES_DIR / folder.name)
    (out_dir / SIGNATURES_DIR / generation).mkdir(parents=True, exist_ok=True)
    index = {
        "params": index_params(cfg),
        "generations": [g.name for g in previous_generations] + [generation],
    }
    (out_dir / SIGNATURES_DIR / INDEX_FILE).write_text(
        json.dumps(index, indent=2), encoding="utf-8"
    )
    shutil.rmtree(work)

    by_kind: Counter[str] = Counter()
    by_source: Counter[str] = Counter()
    for result in results:
        by_kind.update(result["by_kind"])
        by_source.update(result["by_source"])
    seen = sum(r["input"] for r in results)
    kept = sum(r["kept"] for r in results)
    counts: dict[str, Any] = {
        "input": seen,
        "kept": kept,
        "duplicates": seen - kept,
        "duplicates_by_kind": {k: by_kind.get(k, 0) for k in ("exact", "near", "spans")},
        "duplicates_by_source": dict(sorted(by_source.items())),
    }
    if previous is not None:
        counts["previous_documents"] = first_current
        counts["duplicates_of_previous"] = decided["duplicates_of_previous"]
    body: dict[str, Any] = {
        "counts": counts,
        "phases": {"units": len(units), "executor": describe(executor), "seconds": seconds},
    }
    if cfg.method == "minhash":
        body["near_duplicates"] = {
            "candidate_pairs": candidate_pairs,
            "documents_in_groups": len(roots[0]),
            "threshold": round((1 / cfg.num_bands) ** (1 / cfg.rows_per_band), 3),
            "examples": examples,
        }
    if cfg.repeated_spans != "off":
        body["spans"] = {
            "unit": cfg.repeated_spans,
            "removed": sum(r["spans_cut"] for r in results),
            "chars_removed": sum(r["span_chars_cut"] for r in results),
        }
    if previous is not None:
        body["previous"] = str(previous)
    return body


def read_duplicates(dedup_dir: Path) -> list[dict[str, str]]:
    """The (id, source, duplicate_of, kind) rows of a dedup output, in document order."""
    return pq.read_table(Path(dedup_dir) / DUPLICATES_FILE).to_pylist()
