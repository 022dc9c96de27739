"""Ingest: source files in, document shards out.

In: `sources` from the config (JSONL, CSV, Parquet or text; a file, a folder or a glob; `.gz`
for the line-based types). Out: `part-*.parquet` document shards (see pipeline/documents.py),
`_quarantine.jsonl` for what could not become a document, and a manifest body with counts.

    run_ingest(sources, base_dir, out_dir, max_docs_per_shard) -> manifest body
    source_input_fingerprint(sources, base_dir) -> one hash per source, for stage caching
"""

from pipeline.ingest.files import match_source_files, source_input_fingerprint
from pipeline.ingest.stage import record_to_document, run_ingest, source_name

CODE_VERSION = 1  # bump when the documents ingest writes would change

__all__ = [
    "CODE_VERSION",
    "match_source_files",
    "record_to_document",
    "run_ingest",
    "source_input_fingerprint",
    "source_name",
]
