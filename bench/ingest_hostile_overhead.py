"""What the hostile-input defences cost on normal input: the ingest stage of this checkout against
the same stage at another git revision (default: before issue 13), side by side, interleaved.

Cases (one process each, the stage as `run_ingest` runs it, interpreter start-up left out):
- WARC: the 216 real article / evaluation pages of ../shared/data, `--copies` times, in 4
  gzipped WARC files: page extraction now runs in the extraction worker process (a pipe round
  trip per page, and the worker's start-up), the WARC reader is warc.py instead of warcio;
- JSONL: the shared news JSONL files (16,000+ records, gzipped): bounded line reading with
  encoding and binary checks, per-document text checks.
Best of `--repeats` rounds, each round running both revisions (a noisy neighbour hurts both);
wall time, and CPU time of the stage's process and its children.

Run: .venv/bin/python bench/ingest_hostile_overhead.py [--base REV] [--copies 2] [--repeats 3]
Writes bench/results/ingest_hostile_overhead.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ingest_common import REPO, SHARED, need_shared, table, write_results
from ingest_throughput import build_input

RUN = """
import json, resource, sys, time
from pathlib import Path
from pipeline.config import IngestConfig, JsonlSource, WarcSource
from pipeline.ingest import run_ingest
kind, folder, out = sys.argv[1:4]
if kind == "warc":
    sources = [WarcSource(type="warc", path=f"{folder}/*.warc.gz")]
else:
    sources = [JsonlSource(type="jsonl", path=f"{folder}/*.jsonl.gz")]
def cpu():
    usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)
started, cpu_started = time.perf_counter(), cpu()
manifest = run_ingest(sources, folder, Path(out), IngestConfig())
print(json.dumps({"wall": time.perf_counter() - started, "cpu": cpu() - cpu_started,
                  "documents": manifest["counts"]["documents"]}))
"""
CASES = ("warc", "jsonl")
MEASURES = ("wall", "cpu")


def run_case(code: Path, kind: str, folder: Path, out: Path) -> dict:
    """One ingest run of `kind` with the code at `code`: wall and CPU seconds, documents."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", RUN, kind, str(folder), str(out)],
        env=env,
        cwd=code,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def prepare(work: Path, base_revision: str, copies: int) -> tuple[Path, dict[str, Path], int]:
    """The code at `base_revision`, and the inputs: the WARC files and the news JSONL files."""
    base = work / "base"
    base.mkdir()
    archive = subprocess.run(
        ["git", "archive", base_revision], cwd=REPO, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    pages = build_input(work / "warc", copies)
    news = work / "news"
    news.mkdir()
    for path in (SHARED / "news").glob("*.jsonl.gz"):
        shutil.copy(path, news / path.name)
    return base, {"warc": work / "warc", "jsonl": news}, pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="ef2e609", help="the git revision to compare with")
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    need_shared()
    work = Path(tempfile.mkdtemp(prefix="bench-hostile-overhead-"))
    try:
        base, inputs, pages = prepare(work, args.base, args.copies)
        best: dict[tuple[str, str, str], float] = {}
        documents: dict[tuple[str, str], int] = {}
        for _ in range(args.repeats):
            for kind in CASES:
                for label, code in (("before", base), ("now", REPO)):
                    result = run_case(code, kind, inputs[kind], work / "out")
                    documents[(kind, label)] = result["documents"]
                    for measure in MEASURES:
                        key = (kind, label, measure)
                        best[key] = min(best.get(key, result[measure]), result[measure])
        names = {"warc": f"{pages} HTML pages in 4 WARC.gz", "jsonl": "news JSONL.gz"}
        rows = []
        for kind in CASES:
            for measure in MEASURES:
                before, now = best[(kind, "before", measure)], best[(kind, "now", measure)]
                rows.append(
                    (
                        names[kind],
                        f"{measure} s",
                        round(before, 2),
                        round(now, 2),
                        round(now / before, 3),
                        documents[(kind, "before")],
                        documents[(kind, "now")],
                    )
                )
        header = ("input", "measure", "before", "now", "now / before", "docs before", "docs now")
        body = (
            f"Base revision: `{args.base}`. Best of {args.repeats} interleaved rounds; load "
            f"average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.\n\n"
            f"Command: `.venv/bin/python bench/ingest_hostile_overhead.py --copies {args.copies} "
            f"--repeats {args.repeats}`\n\n"
            + table(rows, header)
            + "\n\n`cpu s`: user and system time of the stage's process and of the processes it "
            "started (the extraction worker), less sensitive than wall time to a busy machine. "
            "The WARC case now includes the extraction worker's start-up (Python and the "
            "extractors' imports, about 0.6 s of CPU), which a real corpus pays once per process."
        )
        write_results(
            "ingest_hostile_overhead", "Hostile-input defences: overhead on normal input", body
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
