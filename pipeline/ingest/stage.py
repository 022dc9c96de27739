"""The ingest stage: source configs in, document shards + quarantine + a manifest body out.

1. Plan: each source's kind (kinds.py, found from its config class) prepares what its units
   share (a feed source with `pages`: an index of its pages' URLs) and lists its numbered units
   of work (units.py).
2. Map: `ingest_unit` (module-level, so worker processes can run it) reads one unit with its
   source's kind (reading.py: records, pages or feeds into documents) and writes
   its documents to `_units/NNNNN/part-*.parquet` and its refusals to `_units/NNNNN/
   _quarantine.jsonl`; it returns its counts. Memory holds one record or page at a time.
3. Merge: the units' documents are concatenated in unit order into `part-NNNNN.parquet` shards
   of `max_docs_per_shard`, refusing ids already seen (12 bytes each); quarantines are joined in
   the same order; counts are summed. The output is the same for any number of workers.

Every document gets a language from `langid.py` (unless its source mapped a `lang` field), the
score in `meta.lang_score`. HTML (WARC responses, html files, feed items joined with their page)
goes through `html.py`, in the extraction worker process of `sandbox.py`, which has a hard
wall-clock limit per page. Nothing is dropped silently: what cannot become a document is in the
quarantine with its reason and a bounded excerpt (EXCERPT_CHARS, never a whole record), and the
manifest counts it by reason and by source; so are the entries a source's listing skipped
(symlink loops, links out of its root, FIFOs). Some problems are repaired instead of refused
(invalid UTF-8 replaced by U+FFFD, NUL characters and lone surrogates removed, a feed whose
broken XML was recovered): they are logged in the quarantine too and counted as
`repaired_by_reason`.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipeline.config import IngestConfig
from pipeline.documents import ShardWriter, shard_paths
from pipeline.ingest.files import EXCERPT_CHARS
from pipeline.ingest.kinds import kind_of, plan_units
from pipeline.ingest.reading import (
    REPAIR_REASONS,
    UnitSink,
    UnitTask,
    source_name,
)
from pipeline.parallel import Executor, SerialExecutor
from pipeline.quarantine import QUARANTINE_FILE, Quarantine

MAX_EXAMPLES = 6
UNITS_DIR = "_units"
UNIT_PART_ROWS = 1 << 40  # one Parquet part per unit; the merge cuts the real shards


def ingest_unit(task: UnitTask) -> dict[str, Any]:
    """Read one unit into its own folder; return its counts (run in any process)."""
    out = Path(task.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kind = kind_of(task.source)
    if kind.web and task.unit.files:
        from pipeline.ingest.sandbox import worker_for

        worker_for(task.settings.extraction)  # its start-up overlaps the sink's
    with ShardWriter(out, UNIT_PART_ROWS) as writer, Quarantine(out) as quarantine:
        sink = UnitSink(task, writer, quarantine)
        if task.unit.problem is not None or task.unit.refusals:
            if task.unit.problem is not None:
                sink.refuse(task.unit.problem)
            for refusal in task.unit.refusals:
                sink.refuse(refusal)
        else:
            kind.read(task, sink)
    return sink.result()


# ---------------------------------------------------------------------------- the stage


def _merge_source_counts(into: dict[str, Any], result: dict[str, Any]) -> None:
    counts = result["counts"]
    into["documents"] += counts.get("documents", 0)
    into["quarantined"] += counts.get("quarantined", 0)
    into["repaired_invalid_utf8"] += counts.get("repaired:invalid_utf8", 0)
    into["files"] += result["files"]
    for key, field in (
        ("languages", "languages"),
        ("extractors", "extractors"),
        ("skipped_records", "skipped_records"),
        ("documents_missing_mapped_field", "missing_mapped"),
    ):
        if result[field]:
            merged = Counter(into.get(key, {}))
            merged.update(result[field])
            into[key] = dict(sorted(merged.items()))


def run_ingest(
    sources: list[Any],
    base_dir: str | Path,
    out_dir: Path,
    settings: IngestConfig,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Read every source into document shards in `out_dir`; return the manifest body."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    units_dir = out_dir / UNITS_DIR
    if units_dir.exists():
        shutil.rmtree(units_dir)
    units_dir.mkdir()

    page_indexes: dict[int, str] = {}
    for index, source in enumerate(sources):
        path = units_dir / f"pages-{index}.json"
        prepared = kind_of(source).prepare(source, path, base_dir, settings)
        if prepared is not None:
            page_indexes[index] = prepared

    units = plan_units(sources, base_dir, settings.split_bytes)
    tasks = [
        UnitTask(
            number,
            unit,
            sources[unit.source_index],
            str(base_dir),
            str(units_dir / f"{number:05d}"),
            settings,
            page_indexes.get(unit.source_index),
        )
        for number, unit in enumerate(units)
    ]
    executor = executor or SerialExecutor()
    try:
        results = executor.map(ingest_unit, tasks)
    finally:
        from pipeline.ingest.sandbox import close_workers

        close_workers()  # this process's extraction workers (pool workers keep theirs)

    by_source: dict[str, dict[str, Any]] = {}
    for source in sources:
        by_source.setdefault(
            source_name(source),
            {"documents": 0, "quarantined": 0, "repaired_invalid_utf8": 0, "files": 0},
        )
    sources_without_files: list[str] = []
    examples: list[dict[str, Any]] = []
    languages: Counter[str] = Counter()
    extractors: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    chars = 0
    # a record read twice (a file listed by two sources, say) is refused: its later readings
    repeated = _repeated_ids([Path(task.out_dir) for task in tasks])  # 1 byte a document
    at = 0
    with (
        ShardWriter(out_dir, settings.max_docs_per_shard) as writer,
        Quarantine(out_dir) as quarantine,
    ):
        for task, result in zip(tasks, results, strict=True):
            name = result["source"]
            _merge_source_counts(by_source[name], result)
            if result["problem_only"] and name not in sources_without_files:
                sources_without_files.append(name)
            languages.update(result["languages"])
            extractors.update(result["extractors"])
            skipped.update(result["skipped_records"])
            chars += result["chars"]
            unit_dir = Path(task.out_dir)
            _copy_quarantine(unit_dir, quarantine)
            for path in shard_paths(unit_dir):
                for batch in pq.ParquetFile(path).iter_batches(batch_size=1000):
                    flags = repeated[at : at + batch.num_rows].tolist()
                    at += batch.num_rows
                    for doc, again in zip(batch.to_pylist(), flags, strict=True):
                        if again:
                            _refuse_duplicate(doc, quarantine, by_source[name], languages)
                            chars -= len(doc["text"])
                            continue
                        writer.write(doc)
            example = result["example"]
            if example and len(examples) < MAX_EXAMPLES:
                if all(e["source"] != name for e in examples):
                    examples.append(example)
    shutil.rmtree(units_dir)

    refused = {r: c for r, c in sorted(quarantine.counts.items()) if r not in REPAIR_REASONS}
    repaired = {r: c for r, c in sorted(quarantine.counts.items()) if r in REPAIR_REASONS}
    return {
        "counts": {
            "documents": writer.count,
            "quarantined": sum(refused.values()),
            "by_source": by_source,
            "quarantined_by_reason": refused,
            "repaired_by_reason": repaired,
            "repaired_invalid_utf8": repaired.get("invalid_utf8", 0),
            "sources_without_files": sources_without_files,
            "languages": {k: v for k, v in languages.most_common() if v > 0},
        },
        "stats": {
            "chars": chars,
            "files": sum(c["files"] for c in by_source.values()),
            "shards": writer.shards,
            "units": len(units),
            "extractors": dict(sorted(extractors.items())),
            "skipped_records": dict(sorted(skipped.items())),
        },
        "examples": examples,
    }


def _repeated_ids(unit_dirs: list[Path]) -> np.ndarray:
    """For every document of the units' shards, in order: whether an earlier one has its id.

    Ids are 24 hex digits (`document_id`). They are read one column at a time and held as
    numbers, 12 bytes a document plus a sort's 8, where a Python set of them held ~90 bytes a
    document for the whole merge (150 MB at 1.6 M documents); the first reading of an id wins.
    """
    high, low = [], []
    for unit_dir in unit_dirs:
        for path in shard_paths(unit_dir):
            ids = pq.read_table(path, columns=["id"]).column(0).to_pylist()
            raw = np.frombuffer(bytes.fromhex("".join(ids)), dtype=np.uint8).reshape(-1, 12)
            high.append(raw[:, :8].copy().view(">u8").ravel().astype(np.uint64))
            low.append(raw[:, 8:].copy().view(">u4").ravel().astype(np.uint32))
    if not high:
        return np.zeros(0, dtype=bool)
    hi, lo = np.concatenate(high), np.concatenate(low)
    del high, low
    order = np.lexsort((np.arange(len(hi)), lo, hi))  # stable: equal ids in reading order
    same = (hi[order][1:] == hi[order][:-1]) & (lo[order][1:] == lo[order][:-1])
    repeated = np.zeros(len(hi), dtype=bool)
    repeated[order[1:][same]] = True
    return repeated


def _copy_quarantine(unit_dir: Path, quarantine: Quarantine) -> None:
    path = unit_dir / QUARANTINE_FILE
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            entry = json.loads(line)
            quarantine.add(
                entry["reason"],
                source=entry["source"],
                locator=entry["locator"],
                detail=entry["detail"],
                record=entry["record"],
            )


def _refuse_duplicate(
    doc: dict[str, Any], quarantine: Quarantine, counts: dict[str, Any], languages: Counter
) -> None:
    locator = json.loads(doc["meta"]).get("_locator", "")
    quarantine.add(
        "duplicate_id",
        source=doc["source"],
        locator=locator,
        detail=f"id {doc['id']} was already given to an earlier record",
        record=doc["text"][:EXCERPT_CHARS],
    )
    counts["documents"] -= 1
    counts["quarantined"] += 1
    languages[doc["lang"] or "unknown"] -= 1
    if counts.get("languages", {}).get(doc["lang"] or "unknown"):
        counts["languages"][doc["lang"] or "unknown"] -= 1
