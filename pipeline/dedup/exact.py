"""Exact deduplication: document shards in, shards without repeated texts out.

Two documents are duplicates when their texts match after `dedup_key` (lowercase, punctuation
removed, whitespace collapsed), so "Hello, World!" and "hello world" are one text. The first
occurrence in shard order is kept, which makes the result deterministic; every later one is
listed in `duplicates.parquet` as (id, source, duplicate_of), where `duplicate_of` is the id of
the kept document. Memory holds a 16-byte digest and the kept id per distinct text, never
the texts themselves.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import DedupConfig
from pipeline.documents import ShardWriter, iter_batches

DUPLICATES_FILE = "duplicates.parquet"
DUPLICATES_SCHEMA = pa.schema(
    [("id", pa.string()), ("source", pa.string()), ("duplicate_of", pa.string())]
)
_WHITESPACE = re.compile(r"\s+")


@lru_cache(maxsize=65536)
def _is_punctuation(char: str) -> bool:
    return unicodedata.category(char).startswith("P")


def dedup_key(text: str) -> str:
    """The text as compared: lowercase, Unicode punctuation dropped, whitespace collapsed."""
    text = "".join(c for c in text.lower() if not _is_punctuation(c))
    return _WHITESPACE.sub(" ", text).strip()


def text_digest(text: str) -> bytes:
    return hashlib.blake2b(dedup_key(text).encode("utf-8"), digest_size=16).digest()


def run_dedup(in_dir: Path, out_dir: Path, cfg: DedupConfig) -> dict[str, Any]:
    """Drop exact duplicates (after `dedup_key`) from `in_dir` into `out_dir`; manifest body."""
    if cfg.method != "exact":
        raise ValueError(f"dedup method {cfg.method!r} is not implemented here")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    first_id_by_digest: dict[bytes, str] = {}
    duplicates_by_source: Counter[str] = Counter()
    seen = 0
    duplicate_rows: list[dict[str, str]] = []

    duplicates_writer = pq.ParquetWriter(out_dir / DUPLICATES_FILE, DUPLICATES_SCHEMA)
    with ShardWriter(out_dir, cfg.max_docs_per_shard) as writer:
        for batch in iter_batches(in_dir):
            for doc in batch.to_pylist():
                seen += 1
                digest = text_digest(doc["text"] or "")
                first_id = first_id_by_digest.get(digest)
                if first_id is None:
                    first_id_by_digest[digest] = doc["id"]
                    writer.write(doc)
                    continue
                duplicates_by_source[doc["source"]] += 1
                duplicate_rows.append(
                    {"id": doc["id"], "source": doc["source"], "duplicate_of": first_id}
                )
                if len(duplicate_rows) >= 10_000:
                    duplicates_writer.write_table(
                        pa.Table.from_pylist(duplicate_rows, schema=DUPLICATES_SCHEMA)
                    )
                    duplicate_rows = []
        if duplicate_rows:
            duplicates_writer.write_table(
                pa.Table.from_pylist(duplicate_rows, schema=DUPLICATES_SCHEMA)
            )
    duplicates_writer.close()

    duplicates = seen - writer.count
    return {
        "counts": {
            "input": seen,
            "kept": writer.count,
            "duplicates": duplicates,
            "duplicates_by_source": dict(sorted(duplicates_by_source.items())),
        }
    }


def read_duplicates(dedup_dir: Path) -> list[dict[str, str]]:
    """The (id, source, duplicate_of) rows of a dedup output, in the order they were found."""
    return pq.read_table(Path(dedup_dir) / DUPLICATES_FILE).to_pylist()
