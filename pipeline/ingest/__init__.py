"""Ingest: source files in, document shards out.

In: `sources` from the config: record files (JSONL, CSV, Parquet, text; `.gz` for the line-based
types), Hugging Face datasets (hub, `save_to_disk` folders, data files), WARC/ARC files, folders
of saved HTML pages, RSS/Atom/JSON feeds; a file, a folder, a glob or an fsspec URL. Out:
`part-*.parquet` document shards (see pipeline/documents.py) with a detected language,
`_quarantine.jsonl` for what could not become a document (and what was repaired), and a manifest
body with counts by source, by reason and by language.

    run_ingest(sources, base_dir, out_dir, settings, executor) -> manifest body
    source_input_fingerprint(sources, base_dir) -> one hash per source, for stage caching

Modules: units (units of work), readers (record files), hf (datasets), web (WARC, HTML,
feeds), html (decoding and main-text extraction), langid (language identification), stage.
"""

from pipeline.ingest.files import match_source_files, source_input_fingerprint
from pipeline.ingest.stage import record_to_document, run_ingest, source_name

CODE_VERSION = 2  # bump when the documents ingest writes would change

__all__ = [
    "CODE_VERSION",
    "match_source_files",
    "record_to_document",
    "run_ingest",
    "source_input_fingerprint",
    "source_name",
]
