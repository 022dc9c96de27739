"""Dedup: document shards in, document shards without duplicate texts out.

In: a folder of document shards and a `DedupConfig`. Out: the kept documents as shards,
`duplicates.parquet` (id, source, duplicate_of) for the removed ones, and a manifest body.

    run_dedup(in_dir, out_dir, cfg) -> manifest body
"""

from pipeline.dedup.exact import DUPLICATES_FILE, dedup_key, read_duplicates, run_dedup, text_digest

CODE_VERSION = 1  # bump when the documents dedup keeps would change

__all__ = [
    "CODE_VERSION",
    "DUPLICATES_FILE",
    "dedup_key",
    "read_duplicates",
    "run_dedup",
    "text_digest",
]
