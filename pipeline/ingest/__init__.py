"""Ingest: source files in, document shards out.

In: `sources` from the config: record files (JSONL, CSV, Parquet, text; `.gz` for the line-based
types), Hugging Face datasets (hub, `save_to_disk` folders, data files), WARC/ARC files, folders
of saved HTML pages, RSS/Atom/JSON feeds; a file, a folder or a glob or an fsspec URL. Out:
`part-*.parquet` document shards (see pipeline/documents.py) with a detected language,
`_quarantine.jsonl` for what could not become a document (and what was repaired), and a manifest
body with counts by source, by reason and by language.

    run_ingest(sources, base_dir, out_dir, settings, executor) -> manifest body
    source_input_fingerprint(sources, base_dir) -> one hash per source, for stage caching

Modules: units (units of work), files (listing confined to a source's root, bounded streams),
encoding (BOM / UTF-8 / detection, binary files), readers (record files), hf (datasets), warc
(WARC/ARC records, resynchronised after damage), web (pages and feeds), html (decoding and
main-text extraction), sandbox (the extraction worker process with a hard time limit), langid
(language identification), stage.

The names below are imported on first use, so that the extraction worker process, which imports
`pipeline.ingest.sandbox`, does not load pyarrow and the rest of the stage.
"""

from __future__ import annotations

from typing import Any

CODE_VERSION = 3  # bump when the documents ingest writes would change

__all__ = [
    "CODE_VERSION",
    "match_source_files",
    "record_to_document",
    "run_ingest",
    "source_input_fingerprint",
    "source_name",
]


def __getattr__(name: str) -> Any:
    if name in ("match_source_files", "source_input_fingerprint"):
        from pipeline.ingest import files

        return getattr(files, name)
    if name in ("record_to_document", "run_ingest", "source_name"):
        from pipeline.ingest import stage

        return getattr(stage, name)
    raise AttributeError(f"module 'pipeline.ingest' has no attribute {name!r}")
