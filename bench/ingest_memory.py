"""Peak memory of the ingest stage on a small and on a large input: flat, whatever the size.

Each run is its own process (`run_ingest`, default settings, 1 process), which reports its peak
RSS (ru_maxrss). Inputs, built from real data:
- WARC: the 216 real article / multilingual pages as one gzipped WARC, and the same pages
  `--copies` times over (other URLs) as one larger WARC;
- JSONL: the BBC news articles as one uncompressed file, and `--copies` x 5 times that
  (split into byte ranges by the stage).
A line "imports only" gives the process's fixed cost (Python, pyarrow, the extractors, the
language-ID model).

Run: .venv/bin/python bench/ingest_memory.py [--copies 10]
Writes bench/results/ingest_memory.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ingest_common import (
    REPO,
    SHARED,
    article_pages,
    eval_pages,
    need_shared,
    table,
    write_results,
    write_warc,
)

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from pydantic import TypeAdapter
from pipeline.config import IngestConfig, SourceConfig
from pipeline.ingest import run_ingest
from pipeline.ingest.langid import LanguageIdentifier
from pipeline.ingest.html import HtmlExtractor
import trafilatura, resiliparse.extract.html2text
LanguageIdentifier(IngestConfig().langid).identify("load the model")
source, out = json.loads(sys.argv[1]), sys.argv[2]
started = time.perf_counter()
documents = 0
if source:
    settings = IngestConfig(split_bytes=32 * 1024 * 1024)
    manifest = run_ingest([TypeAdapter(SourceConfig).validate_python(source)], "/", out, settings)
    documents = manifest["counts"]["documents"]
print(json.dumps({{"documents": documents, "seconds": time.perf_counter() - started,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def measure(source: dict | None, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    result = subprocess.run(
        [sys.executable, "-c", CHILD.format(repo=str(REPO)), json.dumps(source), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=10)
    args = parser.parse_args()
    need_shared()
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-memory-"))
    try:
        run(work, args.copies)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, copies: int) -> None:
    pages = [(row["url"], row["html"]) for row in article_pages()]
    pages += [(f"http://eval.example/{row['file']}", row["html"]) for row in eval_pages()]
    write_warc(work / "small.warc.gz", pages)
    write_warc(
        work / "large.warc.gz",
        [(f"{url}#copy{c}", html) for c in range(copies) for url, html in pages],
    )
    bbc = gzip.decompress((SHARED / "news" / "bbc_news_fulltext_shared.jsonl.gz").read_bytes())
    (work / "small.jsonl").write_bytes(bbc)
    with (work / "large.jsonl").open("wb") as handle:
        for copy in range(copies * 5):
            for line in bbc.splitlines(keepends=True):
                record = json.loads(line)
                record["id"] = f"{record['id']}-{copy}"
                handle.write((json.dumps(record) + "\n").encode())

    cases = [
        ("imports only", None, None),
        (
            "WARC, 216 pages",
            {"type": "warc", "path": str(work / "small.warc.gz")},
            work / "small.warc.gz",
        ),
        (
            f"WARC, {216 * copies:,} pages",
            {"type": "warc", "path": str(work / "large.warc.gz")},
            work / "large.warc.gz",
        ),
        (
            "JSONL, 1,767 articles",
            {"type": "jsonl", "path": str(work / "small.jsonl")},
            work / "small.jsonl",
        ),
        (
            f"JSONL, {1767 * copies * 5:,} articles",
            {"type": "jsonl", "path": str(work / "large.jsonl"), "fields": {"id": "id"}},
            work / "large.jsonl",
        ),
    ]
    rows = []
    for name, source, path in cases:
        started = time.perf_counter()
        result = measure(source, work / "out")
        size = path.stat().st_size / 1e6 if path else 0
        rows.append(
            (
                name,
                f"{size:.1f}",
                result["documents"],
                round(result["seconds"], 1),
                round(result["maxrss_mb"]),
            )
        )
        print(name, result, f"{time.perf_counter() - started:.1f} s", flush=True)
    body = (
        f"Command: `.venv/bin/python bench/ingest_memory.py --copies {copies}`\n\n"
        + table(rows, ("input", "file MB", "documents", "ingest s", "peak RSS MB"))
        + "\n\nPeak RSS is the whole process's, the fixed cost of the first line included."
    )
    write_results("ingest_memory", "Ingest memory on small and large inputs", body)


if __name__ == "__main__":
    main()
