"""The quality stage: document shards in, scored (and optionally filtered) shards out.

In: a folder of document shards (the last document stage before it), the `PipelineConfig` (its
`quality` section, and `ingest` to read the reference source). Out, in `out_dir`:

- `classifier/` (`model.safetensors`, `classifier.json`): the classifier, trained here on the
  reference text (`quality.positives`, read as ingest reads sources) against documents sampled
  from the input (of `quality.negative_sources`), or the one `quality.classifier` names;
- the kept documents (`part-<unit>-<k>.parquet`), each with `quality_score` in its meta;
- `scores.parquet`: id, source, quality_score, kept, for every input document (the signal:
  another threshold can be judged without scoring again); `_quarantine.jsonl` with each
  removed document; `quality_scores.png`, the histogram;
- the manifest body: held-out accuracy and AUC, scoring docs/s, the score histogram, a document
  at each decile, and the counts kept and removed, by source.

Samples are chosen by a hash of the document id (a different salt for the held-out split), so
the same documents are chosen in every run. Scoring and filtering are maps over the input
shards (the stage's executor); which documents a `keep_fraction` keeps is decided between them
over all scores, best first, ties in document order.
"""

from __future__ import annotations

import hashlib
import json
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

from pipeline.config import PipelineConfig, QualityConfig
from pipeline.documents import ShardWriter, iter_batches, shard_paths
from pipeline.parallel import Executor, Log, SerialExecutor, describe, timed_map
from pipeline.quality.classifier import (
    QualityClassifier,
    classifier_files,
    heldout_measures,
    load_classifier,
    train_classifier,
)
from pipeline.quarantine import QUARANTINE_FILE, Quarantine, join_unit_quarantines
from pipeline.tokenizer.pretrained import is_mlflow_uri

CLASSIFIER_DIR = "classifier"
SCORES_FILE = "scores.parquet"
HISTOGRAM_FILE = "quality_scores.png"
WORK_DIR = "_quality_work"
HISTOGRAM_BINS = 20
EXCERPT_CHARS = 300
SCORES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("quality_score", pa.float32()),
        ("kept", pa.bool_()),
    ]
)


def _fraction(doc_id: str, salt: str) -> float:
    digest = hashlib.blake2b(f"{salt}\x1f{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _sample(folder: Path, sources: list[str], limit: int, salt: str) -> list[tuple[str, str]]:
    """(id, text) of about `limit` documents of `folder` (of `sources`, if any), by id hash."""
    wanted = set(sources)
    candidates = 0
    for batch in iter_batches(folder, columns=["source"]):
        column = batch.column(0).to_pylist()
        candidates += len(column) if not wanted else sum(s in wanted for s in column)
    share = min(1.0, limit / candidates) if candidates else 0.0
    chosen = []
    for batch in iter_batches(folder, columns=["id", "source", "text"]):
        for doc_id, source, text in zip(*(c.to_pylist() for c in batch.columns), strict=True):
            if (not wanted or source in wanted) and text and _fraction(doc_id, salt) < share:
                chosen.append((doc_id, text))
    return chosen[:limit]


# ---------------------------------------------------------------------- the classifier


def reference_inputs(config: PipelineConfig, tracking_uri: str | None) -> list[str]:
    """What the classifier comes from, for the fingerprint: the reference files' contents, or
    the reused classifier's."""
    cfg = config.quality
    if cfg.classifier:
        weights, description = classifier_files(
            locate_classifier(cfg.classifier, config.base_dir, tracking_uri)
        )
        digest = hashlib.sha256(weights.read_bytes() + description.read_bytes()).hexdigest()
        return [f"classifier:{digest}"]
    from pipeline.ingest import source_input_fingerprint

    return source_input_fingerprint(cfg.positives, config.base_dir)


@lru_cache(maxsize=8)
def locate_classifier(spec: str, base_dir: str, tracking_uri: str | None) -> Path:
    """A local path for `quality.classifier`: a file or folder, or an MLflow URI downloaded."""
    if is_mlflow_uri(spec):
        import mlflow

        return Path(
            mlflow.artifacts.download_artifacts(artifact_uri=spec, tracking_uri=tracking_uri)
        )
    path = Path(spec).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def _train(
    docs_dir: Path, out_dir: Path, config: PipelineConfig, executor: Executor, log: Log | None
) -> QualityClassifier:
    """Train on the reference text against sampled input documents; measure on held-out ones."""
    from pipeline.ingest import run_ingest

    cfg = config.quality
    reference_dir = out_dir / WORK_DIR / "reference"
    ingested = run_ingest(cfg.positives, config.base_dir, reference_dir, config.ingest, executor)
    positives = _sample(reference_dir, [], cfg.max_examples, f"positive-{cfg.seed}")
    negatives = _sample(docs_dir, cfg.negative_sources, cfg.max_examples, f"negative-{cfg.seed}")
    if not positives:
        raise ValueError(f"quality.positives: no documents read ({ingested.get('counts')})")
    if not negatives:
        raise ValueError(
            "quality.negative_sources: no input documents to sample negatives from "
            f"(sources asked: {cfg.negative_sources or 'all'})"
        )
    labelled = [(t, 1, i) for i, t in positives] + [(t, 0, i) for i, t in negatives]
    heldout = [_fraction(i, f"heldout-{cfg.seed}") < cfg.heldout_fraction for _, _, i in labelled]
    train = [x for x, h in zip(labelled, heldout, strict=True) if not h]
    test = [x for x, h in zip(labelled, heldout, strict=True) if h]
    started = time.perf_counter()
    classifier = train_classifier(
        [t for t, _, _ in train],
        [y for _, y, _ in train],
        cfg.hash_bits,
        cfg.word_ngrams,
        cfg.max_chars,
        cfg.regularization,
    )
    seconds = time.perf_counter() - started
    measures = heldout_measures(classifier.score([t for t, _, _ in test]), [y for _, y, _ in test])
    classifier.info = {
        "trained_on": {
            "positives": [s.name or f"{s.type}:{s.path}" for s in cfg.positives],
            "negative_sources": cfg.negative_sources or "all input documents",
            "train_positives": sum(y for _, y, _ in train),
            "train_negatives": sum(1 - y for _, y, _ in train),
            "heldout_positives": sum(y for _, y, _ in test),
            "heldout_negatives": sum(1 - y for _, y, _ in test),
            "seconds": round(seconds, 2),
        },
        "heldout": measures,
    }
    if log:
        log(
            f"quality: classifier held-out accuracy {measures['accuracy']:.3f}, AUC {measures['auc']:.3f}"
        )
    shutil.rmtree(reference_dir, ignore_errors=True)
    return classifier


# --------------------------------------------------------------------------- units of work


@dataclass(frozen=True)
class QualityUnit:
    index: int
    shard: str
    out_dir: str
    config: QualityConfig


def _work(unit: QualityUnit) -> Path:
    return Path(unit.out_dir) / WORK_DIR / f"unit-{unit.index:05d}"


def score_shard(unit: QualityUnit) -> dict[str, Any]:
    """Phase 1: every document's score, written to the unit's scores file."""
    classifier = _cached_classifier(str(Path(unit.out_dir) / CLASSIFIER_DIR))
    work = _work(unit)
    work.mkdir(parents=True, exist_ok=True)
    scores, seconds, docs = [], 0.0, 0
    for batch in pq.ParquetFile(unit.shard).iter_batches(batch_size=1000, columns=["text"]):
        texts = [t or "" for t in batch.column(0).to_pylist()]
        started = time.perf_counter()
        scores.append(classifier.score(texts).astype(np.float32))
        seconds += time.perf_counter() - started
        docs += len(texts)
    np.save(work / "scores.npy", np.concatenate(scores) if scores else np.empty(0, np.float32))
    return {"documents": docs, "seconds": seconds}


@lru_cache(maxsize=2)
def _cached_classifier(folder: str) -> QualityClassifier:
    return load_classifier(Path(folder))


def filter_shard(unit: QualityUnit) -> dict[str, Any]:
    """Phase 3: write the kept documents with their scores, quarantine the others."""
    cfg = unit.config
    work = _work(unit)
    scores = np.load(work / "scores.npy")
    keep = np.load(work / "keep.npy")
    wanted = set(np.load(work / "wanted.npy").tolist())
    kept: Counter[str] = Counter()
    removed: Counter[str] = Counter()
    rows, excerpts = [], {}
    row = 0
    with (
        ShardWriter(
            Path(unit.out_dir), cfg.max_docs_per_shard, prefix=f"part-{unit.index:05d}-"
        ) as writer,
        Quarantine(work) as quarantine,
    ):
        for batch in pq.ParquetFile(unit.shard).iter_batches(batch_size=1000):
            for doc in batch.to_pylist():
                score = float(scores[row])
                rows.append(
                    {
                        "id": doc["id"],
                        "source": doc["source"],
                        "quality_score": score,
                        "kept": bool(keep[row]),
                    }
                )
                if row in wanted:
                    excerpts[row] = {
                        "id": doc["id"],
                        "source": doc["source"],
                        "text": (doc["text"] or "")[:EXCERPT_CHARS],
                    }
                if keep[row]:
                    meta = json.loads(doc["meta"] or "{}")
                    meta["quality_score"] = round(score, 6)
                    doc["meta"] = json.dumps(meta, ensure_ascii=False)
                    writer.write(doc)
                    kept[doc["source"]] += 1
                else:
                    reason = (
                        "quality_below_threshold"
                        if cfg.threshold is not None
                        else "quality_not_in_top_fraction"
                    )
                    quarantine.add(
                        reason,
                        source=doc["source"],
                        locator=doc["id"],
                        detail=f"quality_score={score:.4f}",
                        record={
                            "id": doc["id"],
                            "title": doc["title"],
                            "text": (doc["text"] or "")[:2000],
                        },
                    )
                    removed[doc["source"]] += 1
                row += 1
        quarantined = dict(quarantine.counts)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCORES_SCHEMA), work / SCORES_FILE)
    return {
        "kept": dict(kept),
        "removed": dict(removed),
        "quarantined": quarantined,
        "excerpts": excerpts,
    }


def keep_decisions(scores: np.ndarray, cfg: QualityConfig) -> np.ndarray:
    """Which documents stay: score >= threshold; or the best keep_fraction of them (ties in
    document order); or all of them."""
    if cfg.threshold is not None:
        return scores >= cfg.threshold
    keep = np.ones(len(scores), dtype=bool)
    if cfg.keep_fraction is not None and len(scores):
        count = int(round(cfg.keep_fraction * len(scores)))
        order = np.lexsort((np.arange(len(scores)), -scores))  # best first, then document order
        keep[:] = False
        keep[order[:count]] = True
    return keep


# ------------------------------------------------------------------------------ the stage


def run_quality(
    in_dir: Path,
    out_dir: Path,
    config: PipelineConfig,
    tracking_uri: str | None = None,
    executor: Executor | None = None,
    log: Log | None = None,
    mlflow_run_id: str | None = None,
) -> dict[str, Any]:
    """Train (or load) the classifier, score every document of `in_dir`, keep by the rule."""
    cfg = config.quality
    executor = executor or SerialExecutor()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    if cfg.classifier:
        classifier = load_classifier(
            locate_classifier(cfg.classifier, config.base_dir, tracking_uri)
        )
        classifier.info["reused_from"] = cfg.classifier
    else:
        classifier = _train(Path(in_dir), out_dir, config, executor, log)
    classifier.save(out_dir / CLASSIFIER_DIR)
    seconds["classifier"] = round(time.perf_counter() - started, 3)
    if tracking_uri and mlflow_run_id:  # the classifier as an artifact: runs:/RUN/classifier
        from mlflow import MlflowClient

        MlflowClient(tracking_uri).log_artifacts(
            mlflow_run_id, str(out_dir / CLASSIFIER_DIR), CLASSIFIER_DIR
        )

    units = [QualityUnit(i, str(p), str(out_dir), cfg) for i, p in enumerate(shard_paths(in_dir))]
    scored = timed_map(executor, "score", score_shard, units, seconds, log)
    per_unit = [np.load(_work(u) / "scores.npy") for u in units]
    scores = np.concatenate(per_unit) if per_unit else np.empty(0, np.float32)
    keep = keep_decisions(scores, cfg)
    wanted = _decile_positions(scores)
    start = 0
    for unit, part in zip(units, per_unit, strict=True):
        np.save(_work(unit) / "keep.npy", keep[start : start + len(part)])
        local = [p - start for p in wanted.values() if start <= p < start + len(part)]
        np.save(_work(unit) / "wanted.npy", np.array(local, dtype=np.int64))
        start += len(part)
    results = timed_map(executor, "filter", filter_shard, units, seconds, log)

    work = out_dir / WORK_DIR
    join_unit_quarantines(out_dir, [work / f"unit-{u.index:05d}" / QUARANTINE_FILE for u in units])
    with pq.ParquetWriter(out_dir / SCORES_FILE, SCORES_SCHEMA) as writer:
        for unit in units:
            writer.write_table(pq.read_table(_work(unit) / SCORES_FILE))
    excerpts = {}
    start = 0
    for part, result in zip(per_unit, results, strict=True):
        excerpts.update({start + row: text for row, text in result["excerpts"].items()})
        start += len(part)
    shutil.rmtree(work, ignore_errors=True)
    _plot_histogram(scores, cfg, out_dir / HISTOGRAM_FILE)

    kept: Counter[str] = Counter()
    removed: Counter[str] = Counter()
    quarantined: Counter[str] = Counter()
    for result in results:
        kept.update(result["kept"])
        removed.update(result["removed"])
        quarantined.update(result["quarantined"])
    scoring_seconds = sum(r["seconds"] for r in scored)
    counts, edges = np.histogram(scores, bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    return {
        "counts": {
            "input": int(len(scores)),
            "kept": int(keep.sum()),
            "removed": int(len(scores) - keep.sum()),
            "kept_by_source": dict(sorted(kept.items())),
            "removed_by_source": dict(sorted(removed.items())),
            "quarantined_by_reason": dict(sorted(quarantined.items())),
        },
        "metrics": {
            **{f"classifier_{k}": v for k, v in (classifier.info.get("heldout") or {}).items()},
            "score_mean": float(scores.mean()) if len(scores) else None,
            "score_median": float(np.median(scores)) if len(scores) else None,
            "scoring_docs_per_second": round(len(scores) / scoring_seconds, 1)
            if scoring_seconds
            else None,
        },
        "quality": {
            "rule": _rule(cfg),
            "classifier": {k: v for k, v in classifier.info.items()},
            "histogram": [
                {"from": round(float(a), 3), "to": round(float(b), 3), "documents": int(n)}
                for a, b, n in zip(edges[:-1], edges[1:], counts, strict=True)
            ],
            "deciles": [
                {"decile": q, "score": round(float(scores[p]), 4), **excerpts.get(p, {})}
                for q, p in wanted.items()
            ],
        },
        "phases": {"units": len(units), "executor": describe(executor), "seconds": seconds},
    }


def _rule(cfg: QualityConfig) -> str:
    if cfg.threshold is not None:
        return f"keep quality_score >= {cfg.threshold}"
    if cfg.keep_fraction is not None:
        return f"keep the best {cfg.keep_fraction:.0%} by quality_score"
    return "keep all (scores only)"


def _decile_positions(scores: np.ndarray) -> dict[str, int]:
    """The document at each decile of the scores (0%, 10%, ..., 100%): label -> position."""
    if not len(scores):
        return {}
    order = np.argsort(scores, kind="stable")
    return {
        f"{q * 10}%": int(order[min(len(order) - 1, round(q / 10 * (len(order) - 1)))])
        for q in range(11)
    }


def _plot_histogram(scores: np.ndarray, cfg: QualityConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.hist(scores, bins=HISTOGRAM_BINS, range=(0, 1), color="#4c72b0")
    if cfg.threshold is not None:
        axes.axvline(cfg.threshold, color="#c44e52", label=f"threshold {cfg.threshold}")
        axes.legend()
    axes.set_xlabel("quality_score (probability of reference-like text)")
    axes.set_ylabel("documents")
    axes.set_title("Quality scores of the input documents")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
