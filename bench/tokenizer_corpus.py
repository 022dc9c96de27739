"""The shared news corpus as document shards, for the tokenizer benchmarks.

In: ../shared/data/news/*.jsonl.gz (BBC News full text, AG News test and train sample: 16,273
articles, 6.7 MB of UTF-8). Out: `news_documents(folder)` writes them as document shards
(`part-*.parquet`, the format the dedup stage hands the tokenizer stage) and returns their
(id, text) pairs; `write_results` saves a benchmark's report under bench/results/.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
from pathlib import Path

from pipeline.documents import ShardWriter, document_id, make_document

REPO = Path(__file__).resolve().parents[1]
NEWS = REPO.parent / "shared" / "data" / "news"
FILES = (
    "bbc_news_fulltext_shared.jsonl.gz",
    "ag_news_test_shared.jsonl.gz",
    "ag_news_trainsample_shared.jsonl.gz",
)
RESULTS = REPO / "bench" / "results"


def news_documents(folder: Path, copies: int = 1) -> list[tuple[str, str]]:
    """Write the news articles (`copies` times, under new ids) as document shards in `folder`;
    their (id, text) pairs in order."""
    if not all((NEWS / name).is_file() for name in FILES):
        raise SystemExit(f"the shared news corpus is not at {NEWS}")
    pairs = []
    with ShardWriter(folder, max_docs=10_000) as writer:
        for copy in range(copies):
            for name in FILES:
                with gzip.open(NEWS / name, "rt", encoding="utf-8") as lines:
                    for line in lines:
                        record = json.loads(line)
                        locator = f"{name}:{record['id']}" + (f":{copy}" if copy else "")
                        doc = make_document(
                            id=document_id("news", locator), text=record["text"], source=name
                        )
                        writer.write(doc)
                        pairs.append((doc["id"], doc["text"]))
    return pairs


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_results(name: str, text: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(text, encoding="utf-8")
    return path


def table(header: list[str], rows: list[list[object]]) -> str:
    def cell(value: object) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
