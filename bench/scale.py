"""Growth curves: the data path and the training loader at 1x, 10x, 100x of a real corpus.

In: the shared news corpus (BBC + AG News, ../shared/data/news: 16,273 documents, ~7 MB).
Out: bench/results/scale_runs.jsonl (one line per stage and size, appended) and, with
`--report`, the growth table of bench/results/scale.md's measured part (printed).

The corpus at size N: copy 0 is the real documents; copies 1..N-1 are new documents of the
same shape made by recombining pieces of different real articles (a multi-paragraph article
becomes as many paragraphs drawn from the pool of all paragraphs; a one-paragraph AG News item
becomes as many sentences drawn from the pool of all sentences), so they are distinct and dedup
cannot just drop them. A known fraction of the copies are true duplicates of an earlier
generated document: DUP_EXACT verbatim, DUP_NEAR with an edit (a byline, a trimmed last
sentence, a few words changed, site boilerplate), so dedup still has work at every size.

Each stage runs through the project's own code (`pipeline.dag.plan` + `run_stage`, the same
calls the Prefect flow makes) in its own process, one worker, so its figures are the real path
and its own: wall time, docs/s (documents in), peak RSS of the process tree (polled; plus the
stage process's own ru_maxrss), disk written (block writes of the tree, ru_oublock), the output
size, and temporary disk (the stage's peak footprint under the work dir and its TMPDIR, minus
its final output). The loader line builds the training data module on the shards and draws a
fixed number of train batches and one validation pass: its time should not grow with the
corpus, and its memory neither (the shards are memory-mapped).

    nice -n 10 .venv/bin/python bench/scale.py --sizes 1 10     # generate, run, append results
    .venv/bin/python bench/scale.py --report                     # the growth table from the runs
    .venv/bin/python bench/scale.py --sizes 10 --tokenizer-sample 10000000   # + a sampled tokenizer

Generated corpora and work dirs go under --root (default /tmp/llmpipe-scale) and are removed
after each size unless --keep.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEWS = REPO.parent / "shared" / "data" / "news"
FILES = [
    "bbc_news_fulltext_shared.jsonl.gz",
    "ag_news_test_shared.jsonl.gz",
    "ag_news_trainsample_shared.jsonl.gz",
]
RUNS = REPO / "bench" / "results" / "scale_runs.jsonl"
STAGES = ["ingest", "clean", "dedup", "tokenizer", "shards"]
DUP_EXACT = 0.02  # of generated documents: a verbatim copy of an earlier generated document
DUP_NEAR = 0.02  # of generated documents: an edited copy of an earlier generated document
BOILERPLATE = ["Follow us on Twitter for the latest news.", "Copyright 2005. All rights reserved."]
LOADER_BATCHES = 2000  # train batches drawn by the loader measurement, at every size
SENTENCE = re.compile(r"(?<=[.!?])\s+")


# ---------------------------------------------------------------- corpus


def load_records() -> list[dict]:
    records = []
    for name in FILES:
        with gzip.open(NEWS / name, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f):
                records.append(
                    {"id": f"{name.split('_shared')[0]}-{i}", "text": json.loads(line)["text"]}
                )
    return records


def paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


def edited(text: str, rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return "By our correspondent\n\n" + text
    if kind == 1:
        sentences = SENTENCE.split(text)
        return " ".join(sentences[:-1]) if len(sentences) > 3 else text + " (Updated.)"
    if kind == 2:
        words = text.split(" ")
        for i in rng.sample(range(len(words)), max(1, len(words) // 40)):
            words[i] = rng.choice(["said", "new", "also", "now"])
        return " ".join(words)
    return text + "\n\n" + rng.choice(BOILERPLATE)


def write_corpus(scale: int, folder: Path) -> dict:
    """`scale` JSONL files of len(records) documents each; returns what was planted."""
    records = load_records()
    shapes = [paragraphs(r["text"]) for r in records]
    para_pool = [p for ps in shapes if len(ps) > 1 for p in ps]
    sent_pool = [s for r in records for s in SENTENCE.split(r["text"].strip()) if s]
    folder.mkdir(parents=True, exist_ok=True)
    planted = {"documents": 0, "bytes": 0, "exact": 0, "near": 0}
    for copy in range(scale):
        rng = random.Random(copy)
        recent: list[str] = []  # a bounded window of earlier generated texts to duplicate
        with (folder / f"news-{copy:04d}.jsonl").open("w", encoding="utf-8") as out:
            for r, ps in zip(records, shapes, strict=True):
                if copy == 0:
                    text = r["text"]
                else:
                    roll = rng.random()
                    if recent and roll < DUP_EXACT:
                        text = rng.choice(recent)
                        planted["exact"] += 1
                    elif recent and roll < DUP_EXACT + DUP_NEAR:
                        text = edited(rng.choice(recent), rng)
                        planted["near"] += 1
                    elif len(ps) > 1:
                        text = "\n\n".join(rng.choice(para_pool) for _ in ps)
                    else:
                        n = max(2, len(SENTENCE.split(r["text"].strip())))
                        text = " ".join(rng.choice(sent_pool) for _ in range(n))
                    if len(recent) < 1000:
                        recent.append(text)
                    else:
                        recent[rng.randrange(1000)] = text
                line = json.dumps({"id": f"{r['id']}-{copy}", "text": text}) + "\n"
                out.write(line)
                planted["documents"] += 1
                planted["bytes"] += len(line.encode())
    return planted


def write_config(folder: Path, corpus: Path) -> Path:
    import yaml

    config = {
        "name": "scale",
        "workdir": str(folder / "work"),
        "sources": [{"type": "jsonl", "name": "news", "path": str(corpus), "fields": {"id": "id"}}],
        # looser than the quickstart: AG News items are one or two sentences of good prose
        "clean": {"min_words": 10, "c4_min_sentences": 1},
        "tokenizer": {"vocab_size": 8192},
        "model": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 256},
        "train": {"max_steps": 10, "batch_size": 16},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


# ---------------------------------------------------------------- measuring


def folder_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass  # a file renamed or removed while we walk
    return total


def tree_rss(proc) -> int:
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(args: list[str], watch: list[Path], tmpdir: Path) -> dict:
    """Run a child, polling its process tree's RSS and the footprint of `watch` folders."""
    import psutil

    tmpdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(REPO)}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    base = sum(folder_bytes(w) for w in watch if w.exists())
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, __file__, *args], env=env, stdout=subprocess.PIPE, text=True
    )
    proc = psutil.Process(child.pid)
    peak_rss = peak_disk = 0
    ticks = 0
    while child.poll() is None:
        peak_rss = max(peak_rss, tree_rss(proc))
        if ticks % 4 == 0:  # the disk walk costs more: once a second
            peak_disk = max(peak_disk, sum(folder_bytes(w) for w in watch if w.exists()) - base)
        ticks += 1
        time.sleep(0.25)
    wall = time.perf_counter() - started
    out = child.stdout.read()
    if child.returncode:
        raise SystemExit(f"{' '.join(args)} failed ({child.returncode})")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(out.strip().splitlines()[-1])
    final = sum(folder_bytes(w) for w in watch if w.exists()) - base
    result.update(
        wall_s=round(wall, 2),
        peak_rss_mb=round(max(peak_rss, result["self_maxrss_kb"] * 1024) / 2**20, 1),
        written_mb=round((after.ru_oublock - before.ru_oublock) * 512 / 2**20, 1),
        cpu_s=round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
        output_mb=round(final / 2**20, 1),
        temp_mb=round(max(0, peak_disk - final) / 2**20, 1),
    )
    shutil.rmtree(tmpdir, ignore_errors=True)
    return result


def stage_child(config_path: str, name: str) -> None:
    """In a fresh process: run one stage the way the flow does, print its counts."""
    from pipeline.config import load_config
    from pipeline.dag import plan, run_stage, select

    config = load_config(config_path)
    planned = plan(config, config.workdir)
    (one,) = select(planned, only=[name])
    result = run_stage(one, config, log=lambda *a, **k: None)
    print(
        json.dumps(
            {
                "counts": result.counts,
                "stats": {k: v for k, v in result.stats.items() if isinstance(v, int | float)},
                "path": str(one.output.path),
                "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            }
        )
    )


def loader_child(shards_dir: str) -> None:
    """In a fresh process: the pretraining data module on these shards, a fixed amount of work."""
    from pipeline.train.data import TokenShardDataModule

    started = time.perf_counter()
    module = TokenShardDataModule(shards_dir, block_size=256, batch_size=16, val_batches=50, seed=1)
    module.setup("fit")
    setup_s = time.perf_counter() - started
    tokens = 0
    for k, (x, _y) in enumerate(module.train_dataloader()):
        tokens += x.numel()
        if k + 1 == LOADER_BATCHES:
            break
    for x, _y in module.val_dataloader():
        tokens += x.numel()
    print(
        json.dumps(
            {
                "setup_s": round(setup_s, 3),
                "tokens_read": tokens,
                "train_tokens": module.train_windows.total_tokens,
                "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                **resident_kinds(),
            }
        )
    )


def resident_kinds() -> dict[str, float]:
    """This process's resident memory now, by kind (Linux): anonymous (its heap: what it holds)
    and file-backed (pages of mapped files, such as memory-mapped token shards: page cache the
    kernel can drop and share, counted in RSS once touched)."""
    kinds = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                kinds[f"{key[3:].lower()}_rss_mb"] = round(int(value.split()[0]) / 1024, 1)
    return kinds


def dedup_phases(scale: int, root: Path) -> None:
    """`run_dedup` alone on the Nx corpus written straight to document shards (no ingest or
    clean, so every generated document reaches it): peak RSS of this process per phase, polled
    every 50 ms; the reduces are the phases to watch as the corpus grows."""
    import threading

    import psutil

    from pipeline.config import DedupConfig
    from pipeline.dedup import run_dedup
    from pipeline.documents import ShardWriter, make_document

    folder = root / f"dedup-x{scale}"
    shutil.rmtree(folder, ignore_errors=True)
    write_corpus(scale, folder / "jsonl")
    with ShardWriter(folder / "docs", 10_000) as writer:
        for path in sorted((folder / "jsonl").glob("*.jsonl")):
            with path.open(encoding="utf-8") as f:
                for line in f:
                    record = json.loads(line)
                    writer.write(make_document(id=record["id"], text=record["text"], source="news"))
    shutil.rmtree(folder / "jsonl")
    proc, peak = psutil.Process(), [0]

    def poll() -> None:
        while True:
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.05)

    threading.Thread(target=poll, daemon=True).start()
    phases: dict[str, float] = {}

    def log(message: str) -> None:  # timed_map's line after each phase: "<phase>: ..."
        phases[message.split(":")[0]] = round(peak[0] / 2**20, 1)
        peak[0] = 0

    before = resource.getrusage(resource.RUSAGE_SELF)
    body = run_dedup(folder / "docs", folder / "out", DedupConfig(), log=log)
    after = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "stage": "dedup-phases",
        "scale": scale,
        "docs_in": body["counts"]["input"],
        "counts": body["counts"],
        "candidate_pairs": body["near_duplicates"]["candidate_pairs"],
        "documents_in_groups": body["near_duplicates"]["documents_in_groups"],
        "phase_peak_rss_mb": phases,
        "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
        "peak_rss_mb": round(after.ru_maxrss / 1024, 1),
    }
    shutil.rmtree(folder, ignore_errors=True)
    _append(result)


def input_documents(name: str, done: dict[str, dict], planted: dict) -> int:
    """Documents a stage reads: ingest reads the records, the rest what the stage before kept."""
    if name == "ingest":
        return planted["documents"]
    upstream = {"clean": "ingest", "dedup": "clean", "tokenizer": "dedup", "shards": "dedup"}
    counts = done[upstream[name]]["counts"]
    return counts.get("kept", counts.get("documents", 0))


def run_size(scale: int, root: Path, keep: bool, budgets: list[int]) -> None:
    folder = root / f"x{scale}"
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    planted = write_corpus(scale, folder / "corpus")
    print(f"{scale}x corpus: {planted} in {time.perf_counter() - started:.0f} s", flush=True)
    config = write_config(folder, folder / "corpus")
    work = folder / "work"
    done: dict[str, dict] = {}
    RUNS.parent.mkdir(parents=True, exist_ok=True)
    for name in STAGES:
        result = measure(
            ["--stage", str(config), name], [work / name, folder / "tmp"], folder / "tmp"
        )
        docs = input_documents(name, done, planted)
        result.update(stage=name, scale=scale, docs_in=docs, planted=planted)
        result["docs_per_s"] = round(docs / result["wall_s"], 1)
        done[name] = result
        _append(result)
    shards = Path(done["shards"]["path"])
    result = measure(["--loader", str(shards)], [folder / "tmp"], folder / "tmp")
    result.update(stage="loader", scale=scale, docs_in=0, planted=planted)
    _append(result)
    if budgets:
        tokenizer_sample(folder, scale, budgets)
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)


def tokenizer_sample(folder: Path, scale: int, budgets: list[int]) -> None:
    """The tokenizer stage again on the same documents, trained on a sample of `budget`
    characters (`tokenizer.train_chars`) instead of every train document: its time, memory and
    held-out bytes per token beside the full run's. Needs the size's folder with its config and
    dedup output (a run with --keep, or one in progress)."""
    import yaml

    config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    work = Path(config["workdir"])
    for budget in budgets:
        config["tokenizer"]["train_chars"] = budget
        path = folder / f"config-train-chars-{budget}.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        result = measure(["--stage", str(path), "tokenizer"], [work / "tokenizer"], folder / "tmp")
        result.update(stage="tokenizer-sample", scale=scale, train_chars=budget)
        result["docs_in"] = result["counts"]["documents"]
        _append(result)


def _append(result: dict) -> None:
    result["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(json.dumps({k: v for k, v in result.items() if k != "planted"}), flush=True)
    with RUNS.open("a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")


# ---------------------------------------------------------------- report


SNAPSHOT_DOCS = 3.0e9  # assumed: one Common Crawl snapshot's pages, as WET text records
SNAPSHOT_BYTES = 10e12  # assumed: its WET plain text, uncompressed (~3.3 KB a document)


def input_bytes(row: dict, latest: dict[tuple[str, int], dict]) -> float:
    """UTF-8 bytes a stage read (approximate past ingest: characters, or the shards' bytes
    scaled back to the documents dedup read)."""
    scale = row["scale"]
    if row["stage"] == "ingest":
        return row["planted"]["bytes"]
    if row["stage"] == "clean":
        return latest[("ingest", scale)]["stats"]["chars"]
    shards = latest[("shards", scale)]["stats"]
    text = shards["train_bytes"] + shards["val_bytes"]
    if row["stage"] == "dedup":
        return text * row["docs_in"] / max(1, latest[("tokenizer", scale)]["docs_in"])
    return text


def _mb(value: float) -> str:
    return f"{value:.0f}" if value else "-"


def report(compare: list[int] | None = None) -> str:
    rows = [json.loads(line) for line in RUNS.read_text(encoding="utf-8").splitlines() if line]
    latest: dict[tuple[str, int], dict] = {}
    phases = [row for row in rows if row["stage"] == "dedup-phases"]
    samples = [row for row in rows if row["stage"] == "tokenizer-sample"]
    rows = [row for row in rows if row["stage"] not in ("dedup-phases", "tokenizer-sample")]
    for row in rows:  # the last run of each (stage, size) counts
        latest[(row["stage"], row["scale"])] = row
    sizes = sorted({s for _, s in latest})
    header = (
        "| stage | size | run at (UTC) | docs in | wall s | docs/s (wall) | CPU s | docs per CPU s "
        "| peak RSS MB | written MB | output MB | temp MB |"
    )
    lines = ["## Growth", "", header, "|" + "---|" * 12]
    for name in [*STAGES, "loader"]:
        for size in sizes:
            r = latest.get((name, size))
            if not r:
                continue
            per_cpu = f"{r['docs_in'] / r['cpu_s']:,.0f}" if r["docs_in"] else "-"
            lines.append(
                f"| {name} | {size}x | {r['when'][5:16].replace('T', ' ')} | {r['docs_in']:,} | "
                f"{r['wall_s']:.1f} | "
                f"{r.get('docs_per_s', 0):,.0f} | {r['cpu_s']} | {per_cpu} | "
                f"{r['peak_rss_mb']:.0f} | {r['written_mb']} | {r['output_mb']} | {r['temp_mb']} |"
            )
    if len(sizes) >= 2:
        small, large = compare or (sizes[-2], sizes[-1])
        lines += [
            "",
            f"## {large}x against {small}x",
            "",
            "Time per document, larger over smaller (1.00 is linear; the goal is at most 1.2), "
            "and peak RSS, larger over smaller (goal: at most 1.5).",
            "",
            "| stage | CPU s per doc | wall s per doc | peak RSS |",
            "|---|---|---|---|",
        ]
        for name in [*STAGES, "loader"]:
            a, b = latest.get((name, small)), latest.get((name, large))
            if not (a and b):
                continue
            if name == "loader":  # a fixed amount of work at every size: the ratio of times
                cpu, wall = b["cpu_s"] / a["cpu_s"], b["wall_s"] / a["wall_s"]
            else:
                cpu = (b["cpu_s"] / b["docs_in"]) / (a["cpu_s"] / a["docs_in"])
                wall = (b["wall_s"] / b["docs_in"]) / (a["wall_s"] / a["docs_in"])
            rss = b["peak_rss_mb"] / a["peak_rss_mb"]
            lines.append(f"| {name} | {cpu:.2f} | {wall:.2f} | {rss:.2f} |")
        a, b = latest.get(("loader", small)), latest.get(("loader", large))
        if a and b and "anon_rss_mb" in a and "anon_rss_mb" in b:
            lines += [
                "",
                f"The loader's resident memory by kind at the end of its run: anonymous (its heap) "
                f"{a['anon_rss_mb']:.0f} -> {b['anon_rss_mb']:.0f} MB "
                f"({b['anon_rss_mb'] / a['anon_rss_mb']:.2f}x); file-backed (shared libraries and "
                f"the memory-mapped shards' pages it touched) {a['file_rss_mb']:.0f} -> "
                f"{b['file_rss_mb']:.0f} MB, for train shards of "
                f"{a['train_tokens'] * 2 / 2**20:.0f} and {b['train_tokens'] * 2 / 2**20:.0f} MB.",
            ]
        lines += [
            "",
            f"## Capacity (measured at {large}x, per CPU core-second of the stage's process tree)",
            "",
            f"Assumed snapshot: {SNAPSHOT_DOCS:.1e} documents, {SNAPSHOT_BYTES / 1e12:.0f} TB of "
            "text, every stage reading all of it (an upper bound: clean and dedup drop part).",
            "",
            "| stage | docs per core-s | MB per core-s | core-h per snapshot, by docs | by bytes |",
            "|---|---|---|---|---|",
        ]
        total_docs = total_bytes = 0.0
        for name in STAGES:
            r = latest.get((name, large))
            if not r:
                continue
            docs_rate = r["docs_in"] / r["cpu_s"]
            bytes_rate = input_bytes(r, latest) / r["cpu_s"]
            hours_docs = SNAPSHOT_DOCS / docs_rate / 3600
            hours_bytes = SNAPSHOT_BYTES / bytes_rate / 3600
            total_docs += hours_docs
            total_bytes += hours_bytes
            lines.append(
                f"| {name} | {docs_rate:,.0f} | {bytes_rate / 1e6:.2f} | "
                f"{hours_docs:,.0f} | {hours_bytes:,.0f} |"
            )
        lines.append(f"| all five | | | {total_docs:,.0f} | {total_bytes:,.0f} |")
    if phases:
        names = list(phases[-1]["phase_peak_rss_mb"])
        lines += [
            "",
            "## Dedup alone, peak RSS by phase (MB, this process)",
            "",
            "| run at (UTC) | size | docs in | candidate pairs | docs in groups | CPU s | "
            + " | ".join(names)
            + " | peak |",
            "|" + "---|" * (len(names) + 7),
        ]
        for r in phases:
            # 0: the phase ended before the 50 ms poll sampled it
            peaks = " | ".join(_mb(r["phase_peak_rss_mb"].get(n, 0)) for n in names)
            lines.append(
                f"| {r['when'][11:16]} | {r['scale']}x | {r['docs_in']:,} | {r['candidate_pairs']:,} | "
                f"{r['documents_in_groups']:,} | {r['cpu_s']} | {peaks} | {r['peak_rss_mb']:.0f} |"
            )
    if samples:
        lines += [
            "",
            "## The tokenizer on a sample (`tokenizer.train_chars`)",
            "",
            "| size | train_chars | share of train docs' chars | docs trained on | CPU s | "
            "peak RSS MB | held-out bytes per token |",
            "|---|---|---|---|---|---|---|",
        ]
        last = {(r["scale"], r["train_chars"]): r for r in samples}  # the last run of each
        samples = list(last.values())
        for size in sorted({r["scale"] for r in samples}):
            full = latest.get(("tokenizer", size))
            if full:
                lines.append(
                    f"| {size}x | all | 1 | {full['docs_in']:,} | {full['cpu_s']} | "
                    f"{full['peak_rss_mb']:.0f} | {full['stats']['heldout_bytes_per_token']:.4f} |"
                )
            for r in sorted(
                (r for r in samples if r["scale"] == size), key=lambda r: r["train_chars"]
            ):
                lines.append(
                    f"| {size}x | {r['train_chars']:,} | {r['stats']['sample']:.4f} | "
                    f"{r['docs_in']:,} | {r['cpu_s']} | {r['peak_rss_mb']:.0f} | "
                    f"{r['stats']['heldout_bytes_per_token']:.4f} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[])
    parser.add_argument("--root", type=Path, default=Path("/tmp/llmpipe-scale"))
    parser.add_argument("--keep", action="store_true", help="keep the corpora and work dirs")
    parser.add_argument("--report", action="store_true")
    parser.add_argument(
        "--compare", type=int, nargs=2, metavar=("SMALL", "LARGE"), help="the report's two sizes"
    )
    parser.add_argument(
        "--dedup-phases", type=int, nargs="*", default=[], help="run_dedup alone at these sizes"
    )
    parser.add_argument(
        "--tokenizer-sample",
        type=int,
        nargs="*",
        default=[],
        metavar="CHARS",
        help="after each size, the tokenizer again with tokenizer.train_chars=CHARS",
    )
    parser.add_argument(
        "--sample-at",
        nargs=2,
        metavar=("FOLDER", "SIZE"),
        help="--tokenizer-sample on a size's folder kept from an earlier run (--keep)",
    )
    parser.add_argument(
        "--loader-at",
        nargs=2,
        metavar=("SHARDS", "SIZE"),
        help="the loader line alone, on a size's shards folder kept from an earlier run",
    )
    args = parser.parse_args()
    if not NEWS.is_dir():
        raise SystemExit(f"the shared news corpus is not at {NEWS}")
    for scale in args.sizes:
        run_size(scale, args.root, args.keep, args.tokenizer_sample)
    if args.loader_at:
        shards, scale = args.loader_at
        result = measure(["--loader", shards], [args.root / "tmp"], args.root / "tmp")
        _append({**result, "stage": "loader", "scale": int(scale), "docs_in": 0})
    if args.sample_at:
        folder, scale = args.sample_at
        tokenizer_sample(Path(folder), int(scale), args.tokenizer_sample)
    for scale in args.dedup_phases:
        dedup_phases(scale, args.root)
    if args.report:
        print(report(args.compare))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--stage":
        sys.path.insert(0, str(REPO))
        stage_child(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "--loader":
        sys.path.insert(0, str(REPO))
        loader_child(sys.argv[2])
    else:
        main()
