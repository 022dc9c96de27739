"""Dedup at 1x and 10x the shared news corpus: time and peak memory (RSS), one process.

1x is the BBC + AG News files (16,273 documents). 10x adds nine reprints of every document,
each with a realistic edit (a byline, a trimmed last sentence, a few words changed, site
boilerplate), so the 10x corpus is full of near duplicates, as a news crawl is. Each run is a
fresh process (`run_dedup` with the defaults, one worker) whose peak RSS is read from the OS
after it ends; the corpus is written to Parquet shards before, outside the measurement.

    .venv/bin/python bench/clean_dedup_scale.py   # writes bench/results/clean_dedup_scale.md
"""

from __future__ import annotations

import gzip
import json
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.documents import make_document, write_documents  # noqa: E402

NEWS = REPO.parent / "shared" / "data" / "news"
FILES = [
    "bbc_news_fulltext_shared.jsonl.gz",
    "ag_news_test_shared.jsonl.gz",
    "ag_news_trainsample_shared.jsonl.gz",
]
RESULTS = REPO / "bench" / "results" / "clean_dedup_scale.md"
BOILERPLATE = ["Follow us on Twitter for the latest news.", "Copyright 2005. All rights reserved."]


def load() -> list[dict]:
    records = []
    for name in FILES:
        with gzip.open(NEWS / name, "rt", encoding="utf-8") as f:
            records += [
                {"id": f"{name[:3]}-{i}", "text": json.loads(line)["text"]}
                for i, line in enumerate(f)
            ]
    return records


def edited(text: str, rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return "By our correspondent\n\n" + text
    if kind == 1:
        sentences = re.split(r"(?<=[.!?])\s+", text)
        return " ".join(sentences[:-1]) if len(sentences) > 3 else text + " (Updated.)"
    if kind == 2:
        words = text.split(" ")
        for i in rng.sample(range(len(words)), max(1, len(words) // 40)):
            words[i] = rng.choice(["said", "new", "also", "now"])
        return " ".join(words)
    return text + "\n\n" + rng.choice(BOILERPLATE)


def write_corpus(records: list[dict], copies: int, folder: Path) -> int:
    rng = random.Random(copies)
    docs = []
    for copy in range(copies):
        for r in records:
            text = r["text"] if copy == 0 else edited(r["text"], rng)
            docs.append(make_document(id=f"{r['id']}-{copy}", text=text, source="news"))
    write_documents(docs, folder, 10_000)
    return len(docs)


def child(in_dir: str, out_dir: str) -> None:
    """The measured run: the dedup stage in this fresh process."""
    from pipeline.config import DedupConfig
    from pipeline.dedup import run_dedup

    started = time.perf_counter()
    manifest = run_dedup(Path(in_dir), Path(out_dir), DedupConfig())
    manifest["wall_seconds"] = time.perf_counter() - started
    print(json.dumps(manifest))


def measure(in_dir: Path, out_dir: Path) -> tuple[dict, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    output = subprocess.run(
        [sys.executable, __file__, "--child", str(in_dir), str(out_dir)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kib <= before:
        print("warning: peak RSS not above an earlier child's; the figure is a lower bound")
    return json.loads(output.strip().splitlines()[-1]), peak_kib / 1024


def main() -> None:
    records = load()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for copies in (1, 10):  # the smaller first: RUSAGE_CHILDREN keeps the maximum
            folder = Path(tmp) / f"x{copies}"
            documents = write_corpus(records, copies, folder / "in")
            manifest, peak_mib = measure(folder / "in", folder / "out")
            results[copies] = (documents, manifest, peak_mib)
            counts = manifest["counts"]
            phases = manifest["phases"]["seconds"]
            rows.append(
                [
                    f"{copies}x",
                    f"{documents:,}",
                    f"{manifest['wall_seconds']:.1f}",
                    f"{documents / manifest['wall_seconds']:,.0f}",
                    f"{peak_mib:,.0f}",
                    f"{counts['duplicates_by_kind']['exact']:,} / {counts['duplicates_by_kind']['near']:,}",
                    ", ".join(f"{k} {v:.1f}" for k, v in phases.items()),
                ]
            )
    (n1, m1, r1), (n10, m10, r10) = results[1], results[10]
    header = [
        "corpus",
        "documents",
        "seconds",
        "docs/s",
        "peak RSS MiB",
        "exact / near removed",
        "phases (s)",
    ]
    lines = [
        "# Dedup at 1x and 10x the shared news corpus",
        "",
        f"`bench/clean_dedup_scale.py`, {time.strftime('%Y-%m-%d')}, one process, defaults "
        "(exact + MinHash 5-grams, 14 x 8).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(row) + " |" for row in rows],
        "",
        f"10x / 1x: documents {n10 / n1:.1f}x, time {m10['wall_seconds'] / m1['wall_seconds']:.1f}x, "
        f"peak RSS {r10 / r1:.2f}x.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        main()
