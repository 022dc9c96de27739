"""Shared pieces of the ingest benchmarks: the real pages in ../shared/data, word P/R/F1,
a WARC built from real pages, and the results table writer (bench/results/<name>.md)."""

from __future__ import annotations

import gzip
import io
import json
import os
import platform
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
ARTICLES = SHARED / "html" / "article_extraction_benchmark"
TRAF_EVAL = SHARED / "html" / "trafilatura_eval"
RESULTS = REPO / "bench" / "results"
WORD = re.compile(r"\w+")

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def need_shared() -> None:
    if not SHARED.is_dir():
        sys.exit(f"the benchmark data is not here: {SHARED}")


def article_pages() -> list[dict]:
    """The 126 article pages: id, url, html bytes, ground-truth body, the shipped baseline."""
    rows = [json.loads(line) for line in (ARTICLES / "ground_truth.jsonl").open(encoding="utf-8")]
    for row in rows:
        row["html"] = gzip.decompress((ARTICLES / "html" / f"{row['id']}.html.gz").read_bytes())
    return rows


def eval_pages() -> list[dict]:
    """The 90 multilingual pages with must-contain / must-not-contain snippets."""
    rows = [json.loads(line) for line in (TRAF_EVAL / "annotations.jsonl").open(encoding="utf-8")]
    for row in rows:
        row["html"] = gzip.decompress((TRAF_EVAL / "html" / row["file"]).read_bytes())
    return rows


def word_prf(output: str, truth: str) -> tuple[float, float, float]:
    """Bag-of-words precision, recall, F1 over lowercase \\w+ tokens (multiset overlap)."""
    got, want = Counter(WORD.findall(output.lower())), Counter(WORD.findall(truth.lower()))
    overlap = sum((got & want).values())
    precision = overlap / sum(got.values()) if got else 0.0
    recall = overlap / sum(want.values()) if want else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def snippet_score(output: str, page: dict) -> tuple[int, int, int, int]:
    """(must-contain found, of, must-not-contain absent, of), whitespace-normalized."""
    text = " ".join(output.split())
    found = sum(" ".join(s.split()) in text for s in page["with"])
    absent = sum(" ".join(s.split()) not in text for s in page["without"])
    return found, len(page["with"]), absent, len(page["without"])


def write_warc(path: Path, pages: list[tuple[str, bytes]]) -> None:
    """A gzipped WARC of HTTP `response` records (what a crawler stores) for real pages."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with path.open("wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        for url, html in pages:
            headers = StatusAndHeaders(
                "200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1"
            )
            record = writer.create_warc_record(
                url,
                "response",
                payload=io.BytesIO(html),
                http_headers=headers,
                # As Common Crawl writes it; datatrove's reader relies on it.
                warc_headers_dict={"WARC-Identified-Payload-Type": "text/html"},
            )
            writer.write_record(record)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def table(rows: list[tuple], header: tuple) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, title: str, body: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = f"# {title}\n\nMachine: {machine()}.\n\n{body}\n"
    (RESULTS / f"{name}.md").write_text(text, encoding="utf-8")
    print(text)
