"""Dedup: document shards in, document shards without exact and near duplicates out.

In: a folder of document shards and a `DedupConfig` (optionally an earlier dedup output to
dedup against). Out: the kept documents as shards, `duplicates.parquet` (id, source,
duplicate_of, kind) for the removed ones, `signatures/` for later incremental runs, and a
manifest body. A map-reduce over shards and LSH bands (see pipeline/dedup/stage.py).

    run_dedup(in_dir, out_dir, cfg, executor) -> manifest body
"""

from pipeline.dedup.components import component_arrays, component_roots
from pipeline.dedup.exact import dedup_key, text_digest
from pipeline.dedup.minhash import MinHasher, jaccard, lsh_probability, shingle_words
from pipeline.dedup.spans import remove_spans, span_keys, split_spans
from pipeline.dedup.stage import (
    DUPLICATES_FILE,
    SIGNATURES_DIR,
    read_duplicates,
    run_dedup,
)

CODE_VERSION = 2  # bump when the documents dedup keeps would change

__all__ = [
    "CODE_VERSION",
    "DUPLICATES_FILE",
    "SIGNATURES_DIR",
    "MinHasher",
    "component_arrays",
    "component_roots",
    "dedup_key",
    "jaccard",
    "lsh_probability",
    "read_duplicates",
    "remove_spans",
    "run_dedup",
    "shingle_words",
    "span_keys",
    "split_spans",
    "text_digest",
]
