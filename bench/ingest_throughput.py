"""WARC -> extracted documents: the ingest stage against a plain warcio + trafilatura loop and
against datatrove's WarcReader + Trafilatura extractor, and the 1 -> 2 worker speed-up.

Input: the 126 article-benchmark pages and the 90 multilingual trafilatura-eval pages (real
HTML), written as HTTP `response` records into 4 gzipped WARC files (`--copies` repeats them
under other URLs). Every case reads the same files, single process unless it says otherwise:
- plain loop: warcio ArchiveIterator, `trafilatura.extract(favor_precision=True)` per page;
- datatrove: `WarcReader` -> `Trafilatura(favour_precision=True, timeout=5)` in a
  `LocalPipelineExecutor` (1 task, 1 worker; its extractor runs in a sandbox subprocess);
- ingest stage (`run_ingest`), default settings: fast-with-fallback extraction, metadata,
  fastText language ID, Parquet shards; and the same with `extractor: trafilatura`;
- ingest stage with 2 worker processes (pool start-up included), next to the ceiling of this
  machine: two copies of the plain loop run at once (2 x one loop's time / the pair's time).
Best of `--repeats` interleaved rounds (a noisy neighbour hurts every case alike).

Run: .venv/bin/python bench/ingest_throughput.py [--copies 2] [--repeats 2]
Writes bench/results/ingest_throughput.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path

from ingest_common import article_pages, eval_pages, need_shared, table, write_results, write_warc

from pipeline.config import IngestConfig, WarcSource
from pipeline.ingest import run_ingest
from pipeline.parallel import ProcessExecutor, SerialExecutor

WARC_FILES = 4


def build_input(folder: Path, copies: int) -> int:
    pages = [(row["url"], row["html"]) for row in article_pages()]
    pages += [
        (row["url"] if "://" in row["url"] else f"http://eval.example/{row['file']}", row["html"])
        for row in eval_pages()
    ]
    everything = [
        (url if copy == 0 else f"{url}#copy{copy}", html)
        for copy in range(copies)
        for url, html in pages
    ]
    folder.mkdir(parents=True)
    for part in range(WARC_FILES):
        write_warc(folder / f"pages-{part}.warc.gz", everything[part::WARC_FILES])
    return len(everything)


def plain_loop(folder: str) -> int:
    import trafilatura
    from warcio.archiveiterator import ArchiveIterator

    documents = 0
    for path in sorted(Path(folder).glob("*.warc.gz")):
        with path.open("rb") as handle:
            for record in ArchiveIterator(handle):
                if record.rec_type != "response":
                    continue
                content_type = record.http_headers.get_header("Content-Type") or ""
                if not content_type.startswith("text/html"):
                    continue
                html = record.content_stream().read().decode("utf-8", "replace")
                if trafilatura.extract(html, favor_precision=True):
                    documents += 1
    return documents


_datatrove_count = 0


def _count(data, rank: int = 0, world_size: int = 1):  # a datatrove pipeline step
    global _datatrove_count
    for document in data:
        _datatrove_count += 1
        yield document


def datatrove_run(folder: str, logs: str) -> int:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import WarcReader

    global _datatrove_count
    _datatrove_count = 0
    shutil.rmtree(logs, ignore_errors=True)
    LocalPipelineExecutor(
        pipeline=[
            WarcReader(folder, glob_pattern="*.warc.gz"),
            Trafilatura(favour_precision=True, timeout=5),
            _count,
        ],
        tasks=1,
        workers=1,
        logging_dir=logs,
    ).run()
    return _datatrove_count


def ingest_run(folder: str, out: Path, extractor: str, workers: int) -> int:
    shutil.rmtree(out, ignore_errors=True)
    settings = IngestConfig(extraction={"extractor": extractor})
    source = WarcSource(type="warc", path=f"{folder}/*.warc.gz")
    if workers == 1:
        manifest = run_ingest([source], folder, out, settings, SerialExecutor())
    else:
        with ProcessExecutor(workers) as executor:
            manifest = run_ingest([source], folder, out, settings, executor)
    return manifest["counts"]["documents"]


def two_plain_loops(folder: str) -> float:
    context = multiprocessing.get_context("spawn")
    started = time.perf_counter()
    processes = [context.Process(target=plain_loop, args=(folder,)) for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    need_shared()
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-throughput-"))
    try:
        run(work, args.copies, args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, copies: int, repeats: int) -> None:
    folder = work / "warc"
    pages = build_input(folder, copies)
    mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
    cases = {
        "plain loop: warcio + trafilatura.extract(favor_precision)": lambda: plain_loop(
            str(folder)
        ),
        "datatrove: WarcReader + Trafilatura(favour_precision)": lambda: datatrove_run(
            str(folder), str(work / "dt-logs")
        ),
        "ingest stage, default (fast-with-fallback), 1 process": lambda: ingest_run(
            str(folder), work / "out", "fast-with-fallback", 1
        ),
        "ingest stage, extractor trafilatura, 1 process": lambda: ingest_run(
            str(folder), work / "out", "trafilatura", 1
        ),
        "ingest stage, default, 2 worker processes": lambda: ingest_run(
            str(folder), work / "out", "fast-with-fallback", 2
        ),
    }
    seconds: dict[str, float] = {}
    documents: dict[str, int] = {}
    pair = float("inf")
    for _ in range(repeats):
        for name, fn in cases.items():
            started = time.perf_counter()
            documents[name] = fn()
            elapsed = time.perf_counter() - started
            seconds[name] = min(seconds.get(name, elapsed), elapsed)
        pair = min(pair, two_plain_loops(str(folder)))

    plain = seconds["plain loop: warcio + trafilatura.extract(favor_precision)"]
    datatrove = seconds["datatrove: WarcReader + Trafilatura(favour_precision)"]
    rows = [
        (
            name,
            round(s, 2),
            round(pages / s, 1),
            round(plain / s, 2),
            round(datatrove / s, 2),
            documents[name],
        )
        for name, s in seconds.items()
    ]
    one = seconds["ingest stage, default (fast-with-fallback), 1 process"]
    two = seconds["ingest stage, default, 2 worker processes"]
    scaling = [
        ("ingest stage default: 1 -> 2 workers", round(one / two, 2)),
        ("ceiling: two plain loops at once (2 x one loop / the pair)", round(2 * plain / pair, 2)),
    ]
    body = (
        f"Input: {pages} real HTML pages in {WARC_FILES} gzipped WARC files ({mb:.1f} MB). "
        f"Best of {repeats} interleaved rounds.\n\n"
        f"Command: `.venv/bin/python bench/ingest_throughput.py --copies {copies} --repeats {repeats}`\n\n"
        + table(
            rows,
            ("case", "seconds", "pages/s", "x plain loop", "x datatrove", "documents"),
        )
        + "\n\n"
        + table(scaling, ("scaling", "speed-up"))
        + "\n\nThe ingest stage does more per page than the references: it also reads title, "
        "author, date and canonical URL, identifies the language and writes Parquet shards."
    )
    write_results("ingest_throughput", "WARC to documents: throughput", body)


if __name__ == "__main__":
    main()
