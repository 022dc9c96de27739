"""The clean stage: document shards in, normalized and filtered document shards out.

Shard by shard, each document is normalized (pipeline/clean/normalize.py), its quality signals
are computed and the rules of pipeline/clean/quality.py decide. Kept documents are written with
their signals in `meta["signals"]`; rejected ones go to `_quarantine.jsonl` with the failing
rule's name as the reason and `signal=value vs threshold` as the detail.

Beside the shards, `signals.parquet` holds one row per input document (id, source, every
signal, the decision), so `rule_effects(out_dir, other_cfg)` can show what a re-tuned threshold
would keep without reading a single text again.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.clean.normalize import normalize_text
from pipeline.clean.quality import (
    SIGNALS,
    QualityRule,
    compute_signals,
    first_failed_rule,
    quality_rules,
)
from pipeline.config import CleanConfig
from pipeline.documents import ShardWriter, iter_batches
from pipeline.quarantine import Quarantine

SIGNALS_FILE = "signals.parquet"
SIGNALS_SCHEMA = pa.schema(
    [("id", pa.string()), ("source", pa.string())]
    + [(name, pa.float64()) for name in SIGNALS]
    + [("kept", pa.bool_()), ("reason", pa.string())]
)
EMPTY_TEXT = "empty_text"  # nothing left after normalization: no signal is meaningful
EXAMPLE_CHARS = 300
MAX_EXAMPLES = 3


class _SignalsWriter:
    """Appends per-document signal rows to signals.parquet in batches."""

    def __init__(self, path: Path, batch_size: int = 5000):
        self._writer = pq.ParquetWriter(path, SIGNALS_SCHEMA, compression="zstd")
        self._rows: list[dict[str, Any]] = []
        self._batch_size = batch_size

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        if len(self._rows) >= self._batch_size:
            self.flush()

    def flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=SIGNALS_SCHEMA))
            self._rows = []

    def close(self) -> None:
        self.flush()
        self._writer.close()


def run_clean(in_dir: Path, out_dir: Path, cfg: CleanConfig) -> dict[str, Any]:
    """Normalize and filter the documents of `in_dir` into `out_dir`; return the manifest body."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rules = quality_rules(cfg)
    rejected_by_rule: Counter[str] = Counter()
    examples: dict[str, list[dict[str, Any]]] = defaultdict(list)
    seen = kept = 0

    signals_writer = _SignalsWriter(out_dir / SIGNALS_FILE)
    with ShardWriter(out_dir, cfg.max_docs_per_shard) as writer, Quarantine(out_dir) as quarantine:
        for batch in iter_batches(in_dir):
            for doc in batch.to_pylist():
                seen += 1
                doc["text"] = normalize_text(doc["text"] or "", cfg.unicode_form)
                signals = compute_signals(doc["text"])
                if not doc["text"]:
                    reason, detail, signal = EMPTY_TEXT, "no text left after normalization", 0.0
                elif (rule := first_failed_rule(rules, signals)) is not None:
                    reason, detail = rule.name, rule.explain(signals)
                    signal = signals[rule.signal]
                else:
                    reason = None
                signals_writer.add(
                    {
                        "id": doc["id"],
                        "source": doc["source"],
                        **signals,
                        "kept": reason is None,
                        "reason": reason,
                    }
                )
                if reason is None:
                    meta = json.loads(doc["meta"] or "{}")
                    if not isinstance(meta, dict):  # written by something other than ingest
                        meta = {"meta": meta}
                    meta["signals"] = signals
                    doc["meta"] = json.dumps(meta, ensure_ascii=False)
                    writer.write(doc)
                    kept += 1
                    continue
                rejected_by_rule[reason] += 1
                quarantine.add(
                    reason,
                    source=doc["source"],
                    locator=doc["id"],
                    detail=detail,
                    record={"id": doc["id"], "title": doc["title"], "text": doc["text"][:2000]},
                )
                if len(examples[reason]) < MAX_EXAMPLES:
                    examples[reason].append(
                        {"id": doc["id"], "text": doc["text"][:EXAMPLE_CHARS], "signal": signal}
                    )
    signals_writer.close()

    return {
        "counts": {
            "input": seen,
            "kept": kept,
            "rejected": seen - kept,
            "rejected_by_rule": dict(sorted(rejected_by_rule.items())),
        },
        "examples_rejected": dict(examples),
        "rules": [
            {"name": r.name, "signal": r.signal, "keep_if": f"{r.op} {r.threshold:g}"}
            for r in rules
        ],
    }


def rule_effects(clean_dir: Path, cfg: CleanConfig) -> dict[str, Any]:
    """What `cfg`'s thresholds would keep, decided from a clean run's stored signals alone.

    Returns the same counts as `run_clean` would for the same input under `cfg` (the unicode
    form aside, which changes the texts and so the signals themselves).
    """
    table = pq.read_table(Path(clean_dir) / SIGNALS_FILE)
    still_undecided = pc.not_equal(pc.fill_null(table.column("reason"), ""), pa.scalar(EMPTY_TEXT))
    rejected_by_rule: dict[str, int] = {}
    empty = table.num_rows - (pc.sum(still_undecided.cast(pa.int64())).as_py() or 0)
    if empty:
        rejected_by_rule[EMPTY_TEXT] = empty
    rule: QualityRule
    for rule in quality_rules(cfg):
        column = table.column(rule.signal)
        passes = (
            pc.greater_equal(column, rule.threshold)
            if rule.op == ">="
            else pc.less_equal(column, rule.threshold)
        )
        fails_here = pc.and_(still_undecided, pc.invert(passes))
        count = pc.sum(fails_here.cast(pa.int64())).as_py() or 0
        if count:
            rejected_by_rule[rule.name] = count
        still_undecided = pc.and_(still_undecided, passes)
    kept = pc.sum(still_undecided.cast(pa.int64())).as_py() or 0
    return {
        "input": table.num_rows,
        "kept": kept,
        "rejected": table.num_rows - kept,
        "rejected_by_rule": dict(sorted(rejected_by_rule.items())),
    }
