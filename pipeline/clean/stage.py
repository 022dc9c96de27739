"""The clean stage: document shards in, repaired, edited and filtered document shards out.

Shard by shard (one unit of work per input shard, run by the stage's executor), each document
goes through the repairs and edits, in this order:

1. `repair_unicode` (ftfy) and `normalize_text` (pipeline/clean/normalize.py);
2. C4's line edits (pipeline/clean/lines.py);
3. PII redaction (pipeline/clean/pii.py);

then every signal of pipeline/clean/quality.py is computed on the edited text, and the rules
decide in order. Kept documents are written with their signals in `meta["signals"]`; rejected
ones go to `_quarantine.jsonl` with the failing rule's name as the reason and
`signal=value vs threshold` as the detail.

Unit `i` writes `part-<i>-<k>.parquet` (k counts files of at most `max_docs_per_shard` rows) and
its quarantine and signal rows into a work folder; they are then joined in unit order, so the
output is the same for any executor and any number of workers.

Beside the shards, `signals.parquet` holds one row per input document (id, source, language,
every signal, the decision), so `rule_effects(out_dir, other_cfg)` can show what re-tuned
thresholds would keep without reading a single text again. The manifest holds the counts, a
table of the rules (threshold, documents removed, documents failing it in any position), the
edits made (characters repaired, lines dropped by reason, PII replaced by kind) and a few
removed documents per rule, so that a person can judge a rule by what it removed.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.clean.lines import c4_line_edits
from pipeline.clean.normalize import normalize_text, repair_unicode
from pipeline.clean.pii import redact_pii
from pipeline.clean.quality import (
    SIGNAL_NAMES,
    QualityRule,
    compute_signals,
    first_failed_rule,
    language_code,
    quality_rules,
)
from pipeline.config import CleanConfig
from pipeline.documents import ShardWriter, shard_paths
from pipeline.outputs import merge_counts
from pipeline.parallel import Executor, SerialExecutor, describe, timed_map
from pipeline.quarantine import QUARANTINE_FILE, Quarantine

SIGNALS_FILE = "signals.parquet"
SIGNALS_SCHEMA = pa.schema(
    [("id", pa.string()), ("source", pa.string()), ("lang", pa.string())]
    + [("lang_score", pa.float64())]
    + [(name, pa.float64()) for name in SIGNAL_NAMES]
    + [("kept", pa.bool_()), ("reason", pa.string())]
)
EMPTY_TEXT = "empty_text"  # nothing left after normalization: no signal is meaningful
LINES_EDITED_AWAY = "c4_line_edits"  # text there, but C4's line edits dropped every line
UNDECIDABLE = (EMPTY_TEXT, LINES_EDITED_AWAY)
EXAMPLE_CHARS = 300
MAX_EXAMPLES = 3
WORK_DIR = "_clean_work"
# meta keys under which ingest (or a source) may give the language identifier's score
LANGUAGE_SCORE_KEYS = ("lang_score", "language_score", "langid_score")


@dataclass(frozen=True)
class CleanUnit:
    """One input shard to clean; `index` names its output files."""

    index: int
    shard: str
    out_dir: str
    config: CleanConfig


def language_of(doc: dict[str, Any], meta: dict[str, Any]) -> tuple[str | None, float | None]:
    """A document's language code and the identifier's score, each None when unknown."""
    lang = language_code(doc.get("lang"))
    score = None
    for key in LANGUAGE_SCORE_KEYS:
        value = meta.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            score = float(value)
            break
    return lang, score


def _parse_meta(raw: str | None) -> dict[str, Any]:
    try:
        meta = json.loads(raw or "{}")
    except (ValueError, RecursionError):
        return {"meta": raw}
    return meta if isinstance(meta, dict) else {"meta": meta}


def clean_text(text: str, cfg: CleanConfig) -> tuple[str, Counter[str]]:
    """Repairs and edits of one text, in stage order; the counts of what each changed."""
    edits: Counter[str] = Counter()
    if cfg.fix_unicode:
        repaired = repair_unicode(text)
        if repaired != text:
            edits["unicode_repaired_docs"] += 1
            text = repaired
    text = normalize_text(text, cfg.unicode_form)
    text, line_counts = c4_line_edits(text, cfg)
    edits.update({f"c4_{k}": v for k, v in line_counts.items()})
    if cfg.redact_pii:
        text, found = redact_pii(text, cfg.redact_pii)
        edits.update({f"pii_{k}": v for k, v in found.items()})
        if found:
            edits["pii_docs"] += 1
    return text, edits


def _empty_reason(edits: Counter[str]) -> str:
    return LINES_EDITED_AWAY if any(k.startswith("c4_lines") for k in edits) else EMPTY_TEXT


def clean_shard(unit: CleanUnit) -> dict[str, Any]:
    """Clean one shard (a unit of work): write its part files, quarantine and signal rows."""
    cfg = unit.config
    rules = quality_rules(cfg)
    out_dir = Path(unit.out_dir)
    work = out_dir / WORK_DIR / f"unit-{unit.index:05d}"
    work.mkdir(parents=True, exist_ok=True)
    rejected_by_rule: Counter[str] = Counter()
    failing: Counter[str] = Counter()
    edits: Counter[str] = Counter()
    examples: dict[str, list[dict[str, Any]]] = {}
    rows: list[dict[str, Any]] = []
    seen = kept = 0
    signals_writer = pq.ParquetWriter(work / SIGNALS_FILE, SIGNALS_SCHEMA, compression="zstd")
    with (
        ShardWriter(out_dir, cfg.max_docs_per_shard, prefix=f"part-{unit.index:05d}-") as writer,
        Quarantine(work) as quarantine,
    ):
        for batch in pq.ParquetFile(unit.shard).iter_batches(batch_size=1000):
            for doc in batch.to_pylist():
                seen += 1
                meta = _parse_meta(doc.get("meta"))
                lang, lang_score = language_of(doc, meta)
                doc["text"], doc_edits = clean_text(doc.get("text") or "", cfg)
                edits.update(doc_edits)
                signals = compute_signals(doc["text"])
                judged = {**signals, "lang": lang, "lang_score": lang_score}
                if not doc["text"]:
                    reason, value = _empty_reason(doc_edits), 0.0
                    detail = "no text left" + (
                        " after C4's line edits" if reason == LINES_EDITED_AWAY else ""
                    )
                elif (rule := first_failed_rule(rules, judged)) is not None:
                    reason, detail, value = rule.name, rule.explain(judged), judged[rule.signal]
                else:
                    reason = None
                if doc["text"]:
                    failing.update(r.name for r in rules if not r.passes(judged))
                rows.append(
                    {
                        "id": doc["id"],
                        "source": doc["source"],
                        "lang": lang,
                        "lang_score": lang_score,
                        **signals,
                        "kept": reason is None,
                        "reason": reason,
                    }
                )
                if reason is None:
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
                rule_examples = examples.setdefault(reason, [])
                if len(rule_examples) < MAX_EXAMPLES:
                    rule_examples.append(
                        {"id": doc["id"], "text": doc["text"][:EXAMPLE_CHARS], "signal": value}
                    )
            if rows:
                signals_writer.write_table(pa.Table.from_pylist(rows, schema=SIGNALS_SCHEMA))
                rows = []
    signals_writer.close()
    return {
        "input": seen,
        "kept": kept,
        "rejected_by_rule": dict(rejected_by_rule),
        "failing": dict(failing),
        "edits": dict(edits),
        "examples": examples,
    }


def _join_unit_files(out_dir: Path, units: int) -> None:
    """Concatenate the units' quarantine and signal files, in unit order, into the output."""
    work = out_dir / WORK_DIR
    with (out_dir / QUARANTINE_FILE).open("wb") as joined:
        for index in range(units):
            part = work / f"unit-{index:05d}" / QUARANTINE_FILE
            if part.is_file():
                with part.open("rb") as handle:
                    shutil.copyfileobj(handle, joined)
    if (out_dir / QUARANTINE_FILE).stat().st_size == 0:
        (out_dir / QUARANTINE_FILE).unlink()
    with pq.ParquetWriter(out_dir / SIGNALS_FILE, SIGNALS_SCHEMA, compression="zstd") as writer:
        for index in range(units):
            part = pq.ParquetFile(work / f"unit-{index:05d}" / SIGNALS_FILE)
            for group in range(part.num_row_groups):
                writer.write_table(part.read_row_group(group))
    shutil.rmtree(work, ignore_errors=True)


def run_clean(
    in_dir: Path,
    out_dir: Path,
    cfg: CleanConfig,
    executor: Executor | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Clean the documents of `in_dir` into `out_dir`, one unit per shard; manifest body."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = shard_paths(in_dir)
    units = [CleanUnit(i, str(path), str(out_dir), cfg) for i, path in enumerate(shards)]
    seconds: dict[str, float] = {}
    executor = executor or SerialExecutor()
    results = timed_map(executor, "clean", clean_shard, units, seconds, log)
    _join_unit_files(out_dir, len(units))

    totals: dict[str, Any] = {}
    examples: dict[str, list[dict[str, Any]]] = {}
    for result in results:  # unit order: the examples are the first ones in document order
        counted = ("input", "kept", "rejected_by_rule", "failing", "edits")
        merge_counts(totals, {key: result[key] for key in counted})
        for reason, docs in result["examples"].items():
            room = MAX_EXAMPLES - len(examples.setdefault(reason, []))
            examples[reason].extend(docs[: max(room, 0)])
    seen, kept = totals.get("input", 0), totals.get("kept", 0)
    rejected_by_rule = Counter(totals.get("rejected_by_rule", {}))
    failing = Counter(totals.get("failing", {}))
    edits = Counter(totals.get("edits", {}))
    rules = quality_rules(cfg)
    return {
        "counts": {
            "input": seen,
            "kept": kept,
            "rejected": seen - kept,
            "rejected_by_rule": dict(sorted(rejected_by_rule.items())),
        },
        "edits": dict(sorted(edits.items())),
        "examples_rejected": {reason: examples[reason] for reason in sorted(examples)},
        "rules": [
            {
                "name": rule.name,
                "family": rule.family,
                "signal": rule.signal,
                "keep_if": rule.keep_if(),
                "removed": rejected_by_rule.get(rule.name, 0),
                "failing": failing.get(rule.name, 0),
            }
            for rule in rules
        ],
        "phases": {"units": len(units), "executor": describe(executor), "seconds": seconds},
    }


def _rule_passes(rule: QualityRule, table: pa.Table) -> pa.ChunkedArray:
    """Which rows of a signals table pass `rule` (vectorized `QualityRule.passes`)."""
    column = table.column(rule.signal)
    if rule.op == "in":
        passes = pc.or_kleene(pc.is_null(column), pc.is_in(column, pa.array(rule.threshold)))
    elif rule.op == ">=":
        passes = pc.fill_null(pc.greater_equal(column, rule.threshold), True)
    else:
        passes = pc.fill_null(pc.less_equal(column, rule.threshold), True)
    if rule.english_only:
        lang = table.column("lang")
        other = pc.and_(pc.invert(pc.is_null(lang)), pc.not_equal(pc.fill_null(lang, ""), "en"))
        passes = pc.or_(passes, other)
    return passes


def rule_effects(clean_dir: Path, cfg: CleanConfig) -> dict[str, Any]:
    """What `cfg`'s thresholds would keep, decided from a clean run's stored signals alone.

    Returns the same counts as `run_clean` would for the same input under `cfg`, as long as
    `cfg` changes only thresholds (not the repairs and line edits, which change the texts and
    so the signals themselves).
    """
    table = pq.read_table(Path(clean_dir) / SIGNALS_FILE)
    reasons = pc.fill_null(table.column("reason"), "")
    still_undecided = pc.invert(pc.is_in(reasons, pa.array(UNDECIDABLE)))
    rejected_by_rule: dict[str, int] = {}
    for reason in UNDECIDABLE:
        count = pc.sum(pc.equal(reasons, reason).cast(pa.int64())).as_py() or 0
        if count:
            rejected_by_rule[reason] = count
    for rule in quality_rules(cfg):
        passes = _rule_passes(rule, table)
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
