"""Decontamination: document shards in, shards without evaluation-set text out.

In: a folder of document shards, the pipeline config (its evaluation sets and its
`decontaminate` section) and a cache folder for evaluation indexes. Out: the documents less
those sharing a word n-gram with an evaluation example (dropped, or the span cut out), the
matches (`contamination.parquet`), the quarantine, and a per-set contamination report.

    run_decontaminate(in_dir, out_dir, config, cache_dir, executor) -> manifest body
"""

from pipeline.decontaminate.examples import checked_tasks, eval_examples, eval_inputs
from pipeline.decontaminate.index import EvalExample, EvalIndex, build_index, load_index
from pipeline.decontaminate.ngrams import normalized_words
from pipeline.decontaminate.stage import (
    MATCHES_FILE,
    REPORT_FILE,
    contamination_label,
    find_hits,
    prepare_index,
    read_matches,
    run_decontaminate,
)

__all__ = [
    "MATCHES_FILE",
    "REPORT_FILE",
    "EvalExample",
    "EvalIndex",
    "build_index",
    "checked_tasks",
    "contamination_label",
    "eval_examples",
    "eval_inputs",
    "find_hits",
    "load_index",
    "normalized_words",
    "prepare_index",
    "read_matches",
    "run_decontaminate",
]
