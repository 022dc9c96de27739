"""The decontaminate stage: document shards in, shards without evaluation text out.

In: a folder of document shards (the dedup output), the `PipelineConfig` (its evaluation sets
and its `decontaminate` section) and a folder where evaluation indexes are cached. Out, in
`out_dir`:

- the documents (`part-<unit>-<k>.parquet`): all of them less the contaminated ones (`drop`),
  with the matching spans cut out (`cut`), or untouched (`report`);
- `contamination.parquet`: one row per (document, evaluation example) match: document id and
  source, eval set, example id, matching n-grams, what was done;
- `_quarantine.jsonl`: each dropped document, or each cut span, with its reason, the eval sets
  and example ids it matched (`matches`) and an excerpt of the matching text;
- `contamination.json` and the manifest body: per evaluation set, how many of its examples
  appear in the training documents and how many documents were touched.

How it runs: the evaluation index is loaded from the cache or built once (index.py); then one
unit of work per input shard (the stage's executor), each writing its own part files, joined
in unit order, so the output is the same for any number of workers.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import DecontaminateConfig, PipelineConfig
from pipeline.decontaminate.examples import absent_tasks, eval_examples, eval_inputs
from pipeline.decontaminate.index import EvalIndex, build_index, load_index, load_or_build
from pipeline.decontaminate.ngrams import NORMALIZATION, WindowHasher, normalized_words, word_values
from pipeline.documents import ShardWriter, shard_paths
from pipeline.parallel import Executor, Log, SerialExecutor, describe, timed_map
from pipeline.quarantine import QUARANTINE_FILE, Quarantine, join_unit_quarantines

INDEX_VERSION = 1  # bump when an index built from the same files would differ
MATCHES_FILE = "contamination.parquet"
REPORT_FILE = "contamination.json"
WORK_DIR = "_decontaminate_work"
MATCHES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("set", pa.string()),
        ("example_id", pa.string()),
        ("ngrams", pa.int32()),
        ("action", pa.string()),  # dropped | cut | reported
    ]
)
MAX_MATCHES_PER_ENTRY = 20  # eval examples listed in one quarantine entry
EXAMPLES = 5  # matches shown in the report
EXCERPT_CHARS = 300


def index_key(config: PipelineConfig) -> str:
    """The cache key of the evaluation index: the eval files' contents and how they are read,
    and the index parameters."""
    cfg = config.decontaminate
    payload = {
        "inputs": eval_inputs(config),
        "ngram_size": cfg.ngram_size,
        "min_example_words": cfg.min_example_words,
        "normalization": NORMALIZATION,
        "version": INDEX_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def prepare_index(
    config: PipelineConfig, cache_dir: Path, log: Log | None = None
) -> tuple[Path, dict]:
    """The folder of this config's evaluation index (built and cached when new) and how it
    was had: {"key", "built", "seconds"}."""
    cfg = config.decontaminate
    key = index_key(config)
    folder = Path(cache_dir) / key

    def build() -> EvalIndex:
        scratch = Path(cache_dir) / f".{key}.records"
        scratch.mkdir(parents=True, exist_ok=True)
        with Quarantine(scratch) as unreadable:  # bad eval records: the evaluate stage says so
            index = build_index(
                eval_examples(config, unreadable), cfg.ngram_size, cfg.min_example_words
            )
        shutil.rmtree(scratch, ignore_errors=True)
        return index

    folder, how = load_or_build(folder, build, log)
    return folder, {"key": key, **how}


@lru_cache(maxsize=2)
def _cached_index(folder: str) -> EvalIndex:
    """One load per worker process (units of a stage share the index)."""
    index = load_index(Path(folder))
    index.lookup(np.zeros(1, dtype=np.uint64))  # builds its prefilter before the clock starts
    return index


# ------------------------------------------------------------------------------ matching


@dataclass(frozen=True)
class Hit:
    start: int  # first word of the matching window
    length: int  # words in it
    row: int  # index row (the n-gram), whose examples hold it


def find_hits(words: list[str], index: EvalIndex) -> list[Hit]:
    """Every window of the words that an evaluation example holds."""
    if len(words) < index.lengths[0]:
        return []
    hasher = WindowHasher(word_values(words, index.vocabulary))
    hits = []
    for m in index.lengths:
        windows = hasher.windows(m)
        starts, rows = index.lookup(windows)
        hits.extend(
            Hit(start, m, row) for start, row in zip(starts.tolist(), rows.tolist(), strict=True)
        )
    return hits


def _word_spans(text: str, words: list[str]) -> list[tuple[int, int]] | None:
    """Character (start, end) of each normalized word; None if they do not line up."""
    spans, found = [], []
    for token in re.finditer(r"\S+", text):
        normalized = normalized_words(token.group())
        if normalized:
            spans.append(token.span())
            found.extend(normalized)
    return spans if found == words else None


def cut_spans(
    text: str, words: list[str], hits: list[Hit], margin: int
) -> tuple[str, list[str]] | None:
    """The text without the matching windows and `margin` characters around each (merged),
    the pieces left joined by newlines; and the removed pieces. None if words do not align."""
    spans = _word_spans(text, words)
    if spans is None:
        return None
    cuts = sorted(
        (
            max(0, spans[h.start][0] - margin),
            min(len(text), spans[h.start + h.length - 1][1] + margin),
        )
        for h in hits
    )
    merged: list[list[int]] = []
    for start, end in cuts:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    kept, removed, position = [], [], 0
    for start, end in merged:
        kept.append(text[position:start])
        removed.append(text[start:end])
        position = end
    kept.append(text[position:])
    return "\n".join(p.strip() for p in kept if p.strip()), removed


# --------------------------------------------------------------------------- units of work


@dataclass(frozen=True)
class DecontaminateUnit:
    index: int
    shard: str
    out_dir: str
    index_dir: str
    config: DecontaminateConfig


def decontaminate_shard(unit: DecontaminateUnit) -> dict[str, Any]:
    """Match one shard's documents against the index; write its parts; counts and matches."""
    cfg = unit.config
    index = _cached_index(unit.index_dir)
    out_dir = Path(unit.out_dir)
    work = out_dir / WORK_DIR / f"unit-{unit.index:05d}"
    work.mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    found: dict[str, set[str]] = {}  # set -> example ids found
    touched: Counter[str] = Counter()  # set -> documents
    examples: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    chars = 0
    started = time.perf_counter()
    with (
        ShardWriter(out_dir, cfg.max_docs_per_shard, prefix=f"part-{unit.index:05d}-") as writer,
        Quarantine(work) as quarantine,
    ):
        for batch in pq.ParquetFile(unit.shard).iter_batches(batch_size=1000):
            for doc in batch.to_pylist():
                counts["input"] += 1
                text = doc["text"] or ""
                chars += len(text)
                words = normalized_words(text)
                hits = find_hits(words, index)
                if not hits:
                    writer.write(doc)
                    continue
                matched = _matched_examples(hits, index)
                action = _act(doc, text, words, hits, matched, cfg, index, quarantine)
                counts[action] += 1
                if action != "dropped":
                    writer.write(doc)
                for (eval_set, example_id), grams in matched.items():
                    found.setdefault(eval_set, set()).add(example_id)
                    rows.append(
                        {
                            "id": doc["id"],
                            "source": doc["source"],
                            "set": eval_set,
                            "example_id": example_id,
                            "ngrams": grams,
                            "action": action,
                        }
                    )
                for eval_set in {s for s, _ in matched}:
                    touched[eval_set] += 1
                if len(examples) < EXAMPLES:
                    examples.append(_example(doc, words, hits, matched, action))
        quarantined = dict(quarantine.counts)
    pq.write_table(pa.Table.from_pylist(rows, schema=MATCHES_SCHEMA), work / MATCHES_FILE)
    return {
        "counts": dict(counts),
        "found": {s: sorted(ids) for s, ids in found.items()},
        "touched": dict(touched),
        "examples": examples,
        "quarantined": quarantined,
        "chars": chars,
        "seconds": time.perf_counter() - started,
    }


def _matched_examples(hits: list[Hit], index: EvalIndex) -> dict[tuple[str, str], int]:
    """(eval set, example id) -> matching n-grams, for one document."""
    matched: Counter[tuple[str, str]] = Counter()
    for hit in hits:
        for number in index.examples_of_row(hit.row).tolist():
            matched[(index.example_sets[number], index.example_ids[number])] += 1
    return dict(matched)


def _act(
    doc: dict[str, Any],
    text: str,
    words: list[str],
    hits: list[Hit],
    matched: dict[tuple[str, str], int],
    cfg: DecontaminateConfig,
    index: EvalIndex,
    quarantine: Quarantine,
) -> str:
    """Drop, cut or keep a contaminated document (editing `doc` when cut); what was done."""
    listed = [{"set": s, "example_id": e} for s, e in list(matched)[:MAX_MATCHES_PER_ENTRY]]
    detail = ", ".join(f"{m['set']}:{m['example_id']}" for m in listed[:3])
    detail += f" ({len(matched)} examples, {len(hits)} n-grams)"
    if cfg.action == "report":
        return "reported"
    if cfg.action == "cut":
        cut = cut_spans(text, words, hits, cfg.cut_margin_chars)
        if cut is not None:
            rest, removed = cut
            rest_words = normalized_words(rest)
            if len(rest_words) >= max(cfg.min_doc_words, 1) and not find_hits(rest_words, index):
                quarantine.add(
                    "contaminated_span_cut",
                    source=doc["source"],
                    locator=doc["id"],
                    detail=detail,
                    record="\n[...]\n".join(removed),
                    matches=listed,
                )
                doc["text"] = rest
                return "cut"
        reason = "contaminated_too_little_left"
    else:
        reason = "contaminated"
    quarantine.add(
        reason,
        source=doc["source"],
        locator=doc["id"],
        detail=detail,
        record={"id": doc["id"], "title": doc["title"], "text": text[:2000]},
        matches=listed,
    )
    return "dropped"


def _example(
    doc: dict[str, Any],
    words: list[str],
    hits: list[Hit],
    matched: dict[tuple[str, str], int],
    action: str,
) -> dict[str, Any]:
    first = min(hits, key=lambda h: h.start)
    eval_set, example_id = next(iter(matched))
    return {
        "id": doc["id"],
        "source": doc["source"],
        "set": eval_set,
        "example_id": example_id,
        "action": action,
        "matching_words": " ".join(words[first.start : first.start + first.length + 20])[
            :EXCERPT_CHARS
        ],
    }


# ------------------------------------------------------------------------------ the stage


def run_decontaminate(
    in_dir: Path,
    out_dir: Path,
    config: PipelineConfig,
    cache_dir: Path,
    executor: Executor | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Decontaminate the documents of `in_dir` into `out_dir`; return the manifest body."""
    cfg = config.decontaminate
    executor = executor or SerialExecutor()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    index_dir, index_info = prepare_index(config, cache_dir, log)
    seconds["index"] = round(time.perf_counter() - started, 3)
    index = load_index(index_dir)
    units = [
        DecontaminateUnit(i, str(p), str(out_dir), str(index_dir), cfg)
        for i, p in enumerate(shard_paths(in_dir))
    ]
    results = timed_map(executor, "match", decontaminate_shard, units, seconds, log)
    work = out_dir / WORK_DIR
    join_unit_quarantines(out_dir, [work / f"unit-{u.index:05d}" / QUARANTINE_FILE for u in units])
    with pq.ParquetWriter(out_dir / MATCHES_FILE, MATCHES_SCHEMA) as writer:
        for unit in units:
            writer.write_table(pq.read_table(work / f"unit-{unit.index:05d}" / MATCHES_FILE))
    shutil.rmtree(work, ignore_errors=True)

    counts: Counter[str] = Counter()
    quarantined: Counter[str] = Counter()
    found: dict[str, set[str]] = {}
    touched: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    for result in results:
        counts.update(result["counts"])
        quarantined.update(result["quarantined"])
        touched.update(result["touched"])
        for eval_set, ids in result["found"].items():
            found.setdefault(eval_set, set()).update(ids)
        examples.extend(result["examples"][: EXAMPLES - len(examples)])
    report = contamination_report(index, found, touched, absent_tasks(config), cfg.action)
    match_seconds = sum(r["seconds"] for r in results)
    body = {
        "counts": {
            "input": counts["input"],
            "kept": counts["input"] - counts["dropped"],
            "contaminated": counts["dropped"] + counts["cut"] + counts["reported"],
            "dropped": counts["dropped"],
            "cut": counts["cut"],
            "quarantined_by_reason": dict(sorted(quarantined.items())),
        },
        "contamination": report,
        "contamination_examples": examples,
        "index": {
            **index_info,
            "ngram_size": cfg.ngram_size,
            "window_lengths": index.lengths,
            "ngrams": int(len(index.hashes)),
            "examples": len(index.example_ids),
            "words": len(index.vocabulary),
        },
        "stats": {
            "docs_per_second": round(counts["input"] / match_seconds, 1) if match_seconds else None,
            "mb_per_second": round(sum(r["chars"] for r in results) / 1e6 / match_seconds, 2)
            if match_seconds
            else None,
        },
        "phases": {"units": len(units), "executor": describe(executor), "seconds": seconds},
    }
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return body


def contamination_report(
    index: EvalIndex,
    found: dict[str, set[str]],
    touched: Counter[str],
    absent: dict[str, str],
    action: str,
) -> dict[str, Any]:
    """Per evaluation set: its examples, how many could be checked, how many appear in the
    training documents, the share, and the training documents touched."""
    sets: dict[str, Any] = {}
    for eval_set, stats in index.sets.items():
        examples = stats.get("examples", 0)
        hits = len(found.get(eval_set, ()))
        sets[eval_set] = {
            "examples": examples,
            "too_short": stats.get("too_short", 0),
            "found": hits,
            "found_fraction": round(hits / examples, 6) if examples else 0.0,
            "documents": touched.get(eval_set, 0),
        }
    for eval_set, why in absent.items():
        sets.setdefault(eval_set, {"absent": why})
    return {"action": action, "sets": sets}


def contamination_label(entry: dict[str, Any], action: str) -> str:
    """How the evaluate stage marks a task: clean, or N% contaminated."""
    if "absent" in entry:
        return "not checked (file absent)"
    found, examples = entry.get("found", 0), entry.get("examples", 0)
    if not found:
        return "clean"
    share = f"{100 * found / examples:.1f}% ({found}/{examples} examples)"
    if action == "report":
        return f"{share} contaminated"
    done = {"drop": "dropped", "cut": "cut out"}[action]
    return f"clean after decontamination ({share} found in the raw data, {done})"


def read_matches(out_dir: Path) -> list[dict[str, Any]]:
    """The (document, eval example) match rows of a decontaminate output."""
    return pq.read_table(Path(out_dir) / MATCHES_FILE).to_pylist()
