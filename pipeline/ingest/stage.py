"""The ingest stage: source configs in, document shards + quarantine + a manifest body out.

Each source's files are read in order and every record goes straight into a `ShardWriter`, so
memory holds one record (plus the set of 12-byte ids seen, to refuse duplicate ids). Nothing is
dropped silently: a record or file that cannot become a document goes to `_quarantine.jsonl`
with its reason, and the manifest counts it by reason and by source.

Invalid UTF-8 is repaired, not refused: the bytes become U+FFFD and the document is kept,
because one bad byte rarely spoils a whole record. Each repair is still logged in the
quarantine file (reason `invalid_utf8`, detail names the kept document) and counted as
`repaired_invalid_utf8`, apart from `quarantined`, which only counts what was refused.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.documents import ShardWriter, document_id, make_document
from pipeline.ingest.files import match_source_files
from pipeline.ingest.readers import RawRecord, ReadProblem, read_source_file
from pipeline.quarantine import Quarantine

# Quarantine entries that note a repair of a kept document rather than a refusal.
REPAIR_REASONS = frozenset({"invalid_utf8"})
MAPPABLE_COLUMNS = ("id", "url", "title", "published", "lang")
EXAMPLE_CHARS = 300
MAX_EXAMPLES = 3


def source_name(source: Any) -> str:
    """The label a source goes by in counts and in the `source` column."""
    return source.name or f"{source.type}:{source.path}"


def _as_column_value(value: Any) -> str | None:
    """A mapped record field as a document column: strings kept, others rendered."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def record_to_document(
    source: Any, name: str, record: RawRecord
) -> tuple[dict[str, Any] | None, ReadProblem | None]:
    """A document from a record, or the problem that keeps it from being one."""
    fields = record.fields
    text = fields.get(source.text_field)
    if text is None:
        present = ", ".join(sorted(map(str, fields))[:20])
        return None, ReadProblem(
            "missing_text",
            record.locator,
            f"no {source.text_field!r} field (fields: {present})",
            record.raw,
        )
    if not isinstance(text, str):
        return None, ReadProblem(
            "non_string_text",
            record.locator,
            f"{source.text_field!r} is a {type(text).__name__}, not a string",
            record.raw,
        )
    if not text.strip():
        return None, ReadProblem("empty_text", record.locator, "the text is empty", record.raw)

    columns = {
        column: _as_column_value(fields.get(field)) for column, field in source.fields.items()
    }
    url = columns.get("url") or None
    user_id = columns.get("id")
    if user_id:
        # A record's own id, namespaced by source type and name so two sources that both
        # number their records 0, 1, 2 ... never collide.
        doc_id = document_id(source.type, f"{name}|id={user_id}", url)
    else:
        doc_id = document_id(source.type, record.locator, url)

    used = {source.text_field, *source.fields.values()}
    meta = {key: value for key, value in fields.items() if key not in used}
    meta["_locator"] = record.locator  # where it came from, to find the raw record again
    if record.invalid_utf8:
        meta["_invalid_utf8"] = True
    doc = make_document(
        id=doc_id,
        text=text,
        source=name,
        url=url,
        title=columns.get("title"),
        published=columns.get("published"),
        lang=columns.get("lang"),
        meta=meta,
    )
    return doc, None


def _record_for_quarantine(item: RawRecord | ReadProblem) -> Any:
    if item.raw is not None:
        return item.raw
    if isinstance(item, RawRecord):
        # Parquet and text records have no raw line: keep a bounded view of the fields.
        return {k: (v[:500] if isinstance(v, str) else v) for k, v in item.fields.items()}
    return None


class _IngestRun:
    """The state of one ingest: the writers, the ids seen so far and the counts."""

    def __init__(self, writer: ShardWriter, quarantine: Quarantine, base_dir: str | Path):
        self.writer = writer
        self.quarantine = quarantine
        self.base_dir = base_dir
        self.by_source: dict[str, dict[str, Any]] = {}
        self.sources_without_files: list[str] = []
        self.seen_ids: set[bytes] = set()  # 12 bytes an id: refuses a record read twice
        self.examples: list[dict[str, Any]] = []
        self.chars = 0
        self.files = 0

    def refuse(self, name: str, problem: ReadProblem, record: Any = None) -> None:
        self.quarantine.add(
            problem.reason,
            source=name,
            locator=problem.locator,
            detail=problem.detail,
            record=record if record is not None else problem.raw,
        )
        self.by_source[name]["quarantined"] += 1

    def ingest_source(self, source: Any) -> None:
        name = source_name(source)
        counts = self.by_source.setdefault(
            name, {"documents": 0, "quarantined": 0, "repaired_invalid_utf8": 0, "files": 0}
        )
        matched = match_source_files(source.type, source.path, self.base_dir)
        if matched.problem:
            self.sources_without_files.append(name)
            detail = f"{matched.detail} ({matched.resolved})"
            self.refuse(name, ReadProblem(matched.problem, source.path, detail))
            return
        # A mapped field that records lack (often a typo in `fields`) leaves the column
        # empty; count it so the manifest shows it instead of silently losing titles.
        missing_mapped: Counter[str] = Counter()
        for file, file_name in zip(matched.files, matched.names, strict=True):
            counts["files"] += 1
            self.files += 1
            for item in read_source_file(source, file, file_name):
                if isinstance(item, ReadProblem):
                    self.refuse(name, item)
                    continue
                doc, problem = record_to_document(source, name, item)
                if problem is not None:
                    self.refuse(name, problem, _record_for_quarantine(item))
                    continue
                key = bytes.fromhex(doc["id"])
                if key in self.seen_ids:
                    detail = f"id {doc['id']} was already given to an earlier record"
                    problem = ReadProblem("duplicate_id", item.locator, detail)
                    self.refuse(name, problem, _record_for_quarantine(item))
                    continue
                self.seen_ids.add(key)
                if item.invalid_utf8:
                    self.quarantine.add(
                        "invalid_utf8",
                        source=name,
                        locator=item.locator,
                        detail=f"invalid bytes replaced by U+FFFD; kept as document {doc['id']}",
                        record=_record_for_quarantine(item),
                    )
                    counts["repaired_invalid_utf8"] += 1
                missing_mapped.update(
                    c for c, f in source.fields.items() if item.fields.get(f) is None
                )
                self.accept(name, doc, first_of_source=counts["documents"] == 0)
        if missing_mapped:
            counts["documents_missing_mapped_field"] = dict(sorted(missing_mapped.items()))

    def accept(self, name: str, doc: dict[str, Any], first_of_source: bool) -> None:
        self.writer.write(doc)
        self.by_source[name]["documents"] += 1
        self.chars += len(doc["text"])
        if first_of_source and len(self.examples) < MAX_EXAMPLES:
            self.examples.append(
                {
                    "id": doc["id"],
                    "title": doc["title"],
                    "source": name,
                    "text": doc["text"][:EXAMPLE_CHARS],
                }
            )


def run_ingest(
    sources: list[Any], base_dir: str | Path, out_dir: Path, max_docs_per_shard: int
) -> dict[str, Any]:
    """Read every source into document shards in `out_dir`; return the manifest body."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with ShardWriter(out_dir, max_docs_per_shard) as writer, Quarantine(out_dir) as quarantine:
        run = _IngestRun(writer, quarantine, base_dir)
        for source in sources:
            run.ingest_source(source)

    refused_by_reason = {
        reason: count
        for reason, count in sorted(quarantine.counts.items())
        if reason not in REPAIR_REASONS
    }
    return {
        "counts": {
            "documents": writer.count,
            "quarantined": sum(refused_by_reason.values()),
            "by_source": run.by_source,
            "quarantined_by_reason": refused_by_reason,
            "repaired_invalid_utf8": quarantine.counts.get("invalid_utf8", 0),
            "sources_without_files": run.sources_without_files,
        },
        "stats": {"chars": run.chars, "files": run.files, "shards": writer.shards},
        "examples": run.examples,
    }
