"""Data recipes compared on small proxy models: rules only, rules + the quality classifier,
rules + decontamination, on real news and web pages, the same token budget, two seeds each.

What it runs is `llmpipe sweep` (flows/sweep.py) on configs/recipes-sweep.yaml:

    llmpipe sweep configs/recipes-sweep.yaml --seeds 0,1 --variant rules \
      --variant rules+quality quality.enabled=true \
      --variant rules+decontam decontaminate.enabled=true

in a fresh work dir (so the stage counts show what a sweep costs from nothing), then writes
bench/results/recipes_sweep.md: the comparison table (mean ± std over seeds), which variant won
on bits per byte of the fixed reference text (XSum test articles, which no variant trains on) and
by how much against the seed noise, how many times each stage ran, and what the recipes did to
the data (documents kept, contamination found, the classifier's held-out AUC).

    .venv/bin/python bench/recipes_sweep.py [--steps 200] [--seeds 0,1] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_common import REPO, need_shared, table, write_results  # noqa: E402

CONFIG = REPO / "configs" / "recipes-sweep.yaml"
VARIANTS = [
    ["rules"],
    ["rules+quality", "quality.enabled=true"],
    ["rules+decontam", "decontaminate.enabled=true"],
]


def _recipe_notes(result: dict) -> list[str]:
    """What the quality and decontaminate stages did, from their outputs' full results."""
    from pipeline.outputs import read_result

    notes = []
    seen = set()
    for row, outputs in zip(result["runs"], result["outputs"], strict=True):
        if "quality" in outputs and "quality" not in seen:
            seen.add("quality")
            found = read_result(Path(outputs["quality"]))
            shown = ", ".join(
                f"{k.removeprefix('classifier_')} {v:.3f}"
                for k, v in found.metrics.items()
                if k.startswith("classifier_") and isinstance(v, float)
            )
            notes.append(
                f"- {row['variant']}: the classifier (CNN/DailyMail articles vs the web sources), "
                f"held out: {shown}; it kept {row['quality_kept']:,} of {row['dedup_kept']:,} "
                "documents."
            )
        if "decontaminate" in outputs and "decontaminate" not in seen:
            seen.add("decontaminate")
            found = read_result(Path(outputs["decontaminate"]))
            sets = found.details["contamination"]["sets"]
            shown = "; ".join(
                f"{name}: {s.get('found', 0):,} of {s.get('examples', 0):,} examples found in "
                f"{s.get('documents', 0):,} training documents"
                for name, s in sets.items()
                if "absent" not in s
            )
            notes.append(
                f"- {row['variant']}: dropped {found.counts['dropped']:,} of "
                f"{found.counts['input']:,} documents ({shown})."
            )
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="train.max_steps (config: 200)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--workdir", help="default: a fresh temporary folder")
    parser.add_argument("--out", default="recipes_sweep", help="results file name")
    args = parser.parse_args()
    need_shared()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    from pipeline.sweep import check_same_budget, check_variants, expand

    base = [f"train.max_steps={args.steps}"] if args.steps else []
    variants = expand(None, VARIANTS, args.seeds, base)
    budget = check_same_budget(variants, check_variants(str(CONFIG), variants))

    from flows.local_server import start_local_server
    from flows.stack import use_running_prefect_server
    from flows.sweep import sweep_flow

    use_running_prefect_server()
    start_local_server()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="llmpipe-sweep-"))
    load_before = os.getloadavg()[0]
    started = time.time()
    result = sweep_flow(
        str(CONFIG),
        [v.to_dict() for v in variants],
        workdir=str(workdir),
        base_overrides=base,
    )
    seconds = time.time() - started
    load_after = os.getloadavg()[0]

    metric = result["metric"]
    per_run = [
        (r["variant"], r["seed"], r.get(metric), r.get("agnews_test_bpb"), r.get("val_bpb"),
         r.get("hellaswag_acc_norm"))
        for r in result["runs"]
    ]  # fmt: skip
    command = (
        "llmpipe sweep configs/recipes-sweep.yaml --seeds "
        + args.seeds
        + "".join(f" --variant {' '.join(v)}" for v in VARIANTS)
    )
    if base:
        command += " " + " ".join(f"--set {o}" for o in base)
    body = "\n\n".join(
        [
            f"Command (what this script runs): `{command}`, in a fresh work dir. "
            f"{len(result['runs'])} pipeline runs, {seconds / 60:.1f} min wall; load average "
            f"(2 cores, shared with other jobs) {load_before:.1f} at the start, "
            f"{load_after:.1f} at the end. Every run trains the same proxy model on the same "
            f"budget of {budget:,} tokens (config: configs/recipes-sweep.yaml).",
            "Sources: BBC News 2004-2005 (1,767 articles), AG News (10,001 descriptions), web "
            "pages (2 Common Crawl WARC excerpts, 126 saved article pages with their menus and "
            "footers, 10 CCNet documents). Reference text: the first 100 XSum test articles "
            "(BBC 2010-2017: news, never a training source). `agnews_test` is AG News' test "
            "split: the same distribution as a training source, and an evaluation set the "
            "decontamination checks.",
            result["markdown"],
            "Each training run (seed by seed):",
            table(
                per_run,
                (
                    "variant",
                    "seed",
                    metric,
                    "agnews_test_bpb",
                    "val_bpb (own split)",
                    "hellaswag_acc_norm",
                ),
            ),  # fmt: skip
            "What the recipes did to the data:\n\n" + "\n".join(_recipe_notes(result)),
            "`val_bpb` is each variant's own held-out split (different text per variant), so "
            "it does not rank recipes; the reference text does.",
        ]
    )
    write_results(args.out, "Data recipes compared on proxy models (llmpipe sweep)", body)


if __name__ == "__main__":
    main()
