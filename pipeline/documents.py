"""Document shards: the record every data stage reads and writes.

In: iterables of document dicts. Out: `part-00000.parquet`, `part-00001.parquet`, ... in a
folder, with the columns of `DOCUMENT_SCHEMA` (see DESIGN.md, "Document"). Readers stream
record batches, so no stage holds a whole corpus in memory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

DOCUMENT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("title", pa.string()),
        ("published", pa.string()),
        ("lang", pa.string()),
        ("meta", pa.string()),  # JSON object: whatever else the source had
    ]
)
COLUMNS = DOCUMENT_SCHEMA.names


def document_id(source_type: str, locator: str, url: str | None = None) -> str:
    """Stable id: the same source, locator and URL always give the same id."""
    key = "\x1f".join([source_type, locator, url or ""])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]


def make_document(
    *,
    id: str,
    text: str,
    source: str,
    url: str | None = None,
    title: str | None = None,
    published: str | None = None,
    lang: str | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": id,
        "text": text,
        "source": source,
        "url": url,
        "title": title,
        "published": published,
        "lang": lang,
        "meta": json.dumps(meta or {}, ensure_ascii=False, default=str),
    }


def shard_paths(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("part-*.parquet"))


class ShardWriter:
    """Writes documents into numbered Parquet shards of at most `max_docs` rows each."""

    def __init__(self, folder: Path, max_docs: int, batch_size: int = 1000, prefix: str = "part-"):
        self.folder = Path(folder)
        self.prefix = prefix  # "part-00003-" for the files of unit 3 of a parallel stage
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_docs = max_docs
        self.batch_size = min(batch_size, max_docs)
        self.count = 0
        self.shards = 0
        self._writer: pq.ParquetWriter | None = None
        self._in_shard = 0
        self._buffer: list[dict[str, Any]] = []

    def write(self, doc: dict[str, Any]) -> None:
        self._buffer.append(doc)
        self.count += 1
        if (
            len(self._buffer) >= self.batch_size
            or self._in_shard + len(self._buffer) >= self.max_docs
        ):
            self._flush()

    def _flush(self) -> None:
        while self._buffer:
            if self._writer is None:
                path = self.folder / f"{self.prefix}{self.shards:05d}.parquet"
                self._writer = pq.ParquetWriter(path, DOCUMENT_SCHEMA, compression="zstd")
                self.shards += 1
                self._in_shard = 0
            room = self.max_docs - self._in_shard
            chunk, self._buffer = self._buffer[:room], self._buffer[room:]
            self._writer.write_table(pa.Table.from_pylist(chunk, schema=DOCUMENT_SCHEMA))
            self._in_shard += len(chunk)
            if self._in_shard >= self.max_docs:
                self._writer.close()
                self._writer = None

    def close(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_documents(docs: Iterable[dict[str, Any]], folder: Path, max_docs: int) -> int:
    with ShardWriter(folder, max_docs) as writer:
        for doc in docs:
            writer.write(doc)
    return writer.count


def iter_batches(
    folder: Path, batch_size: int = 1000, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    for path in shard_paths(folder):
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns)


def iter_documents(folder: Path, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    for batch in iter_batches(folder, columns=columns):
        yield from batch.to_pylist()


def iter_texts(folder: Path, batch_size: int = 1000) -> Iterator[list[str]]:
    """Batches of document texts, for tokenizer training and encoding."""
    for batch in iter_batches(folder, batch_size=batch_size, columns=["text"]):
        yield batch.column(0).to_pylist()
