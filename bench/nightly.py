"""Five nightly increments on real news: does each day's version beat the one before?

Real news from ../shared/data (BBC News full texts and AG News descriptions), shuffled with a
fixed seed and split into 5 days; every day after the first also carries reprints of earlier
days' articles ("UPDATED:" and a line added: near-duplicates that dedup drops). Each day is one
real `pipeline_flow` run (Prefect, MLflow on SQLite in the work dir) of an incremental config,
with the same token budget every day (`train.tokens`), in four set-ups:

  - nightly: the defaults of issue 20: replay of earlier days' documents (run.replay_fraction
    0.5), the continuation schedule (straight back to the first run's stable-phase rate, then
    the decay) with the champion's optimizer state (train.continuation: continue);
  - rewarm-half: the same, but a re-warmup from min_lr to half the first run's peak over 10
    steps (continue_lr_fraction 0.5, continue_warmup_steps 10);
  - replay-restart: replay, but a fresh optimizer and the full warmup (continuation: restart);
  - restart: what incremental runs did before: today's documents only (replay_fraction 0) and
    the full warmup to the first run's peak, a fresh optimizer;

and, as the upper bound, a model trained from scratch on all five days at once (a full run with
the first day's tokenizer) for the same total tokens as the five increments together.

After each day: val bpb on the first day's held-out split (`val_bpb_first`), on that day's own
new held-out part (`val_bpb_new`), the champion it started from on the same part
(`start_val_bpb_new`), and whether @champion moved (the default rule: val_bpb, which is the first
held-out). At the end the day-5 models and the from-scratch model are scored on every day's held-out
part. Writes bench/results/nightly.md and logs one plot across versions (plots/nightly.png) to an
MLflow run `nightly-bench` in the work dir's tracking store.

    .venv/bin/python bench/nightly.py [--workdir DIR] [--tokens-per-day 100000] [--quick]

Small on purpose (a 4 x 128 GPT, ~20 minutes on a shared 2-core CPU); `--quick` is a smoke run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml  # noqa: E402
from train_common import environment, markdown_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NEWS = REPO.parent / "shared" / "data" / "news"
RESULTS = Path(__file__).resolve().parent / "results" / "nightly.md"
DAYS = 5
REPRINTS = 25  # earlier articles reprinted, updated, on each later day

MODEL = [
    "model.n_layer=4",
    "model.n_embd=128",
    "model.n_head=4",
    "model.block_size=128",
    "tokenizer.vocab_size=2048",
    "train.batch_size=16",
    "train.learning_rate=0.002",
    "train.min_lr=0.0002",
    "train.warmup_steps=20",
    "train.val_every_steps=1000",
    "train.val_batches=4",
    "train.checkpoint_every_steps=1000",
    "train.progress_bar=false",
    "train.sample_tokens=0",
    "evaluate.val_batches=40",
    "evaluate.max_new_tokens=8",
]
SETUPS = {
    # the defaults: replay 0.5, the champion's optimizer moments, straight back to the first
    # run's stable-phase rate, then the decay
    "nightly": [],
    # the other continuation: a re-warmup from min_lr to half the peak over 10 steps
    "rewarm-half": ["train.continue_lr_fraction=0.5", "train.continue_warmup_steps=10"],
    "replay-restart": ["train.continuation=restart"],  # replay, but the full warmup again
    "restart": ["run.replay_fraction=0", "train.continuation=restart"],  # before issue 20
}


def articles(bbc: int, ag: int) -> list[dict[str, str]]:
    """Unique BBC full texts and AG News descriptions, shuffled with a fixed seed."""
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for name, limit in (("bbc_news_fulltext_shared", bbc), ("ag_news_trainsample_shared", ag)):
        with gzip.open(NEWS / f"{name}.jsonl.gz", "rt", encoding="utf-8") as handle:
            taken = 0
            for line in handle:
                row = json.loads(line)
                if row["text"] in seen or len(row["text"]) < 100 or taken >= limit:
                    continue
                seen.add(row["text"])
                rows.append({"id": f"{name.split('_')[0]}-{row['id']}", "text": row["text"]})
                taken += 1
    random.Random(20).shuffle(rows)
    return rows


def write_days(rows: list[dict[str, str]], folder: Path) -> list[Path]:
    """Day files day-N.jsonl: a fifth of the articles each, plus reprints of earlier days'."""
    folder.mkdir(parents=True, exist_ok=True)
    size = len(rows) // DAYS
    paths = []
    for day in range(DAYS):
        today = rows[day * size : (day + 1) * size]
        earlier = rows[: day * size]
        reprints = [
            {"id": f"{a['id']}-upd{day}", "text": "UPDATED: " + a["text"] + "\nMore to follow."}
            for a in random.Random(day).sample(earlier, min(REPRINTS, len(earlier)))
        ]
        path = folder / f"day-{day + 1}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in today + reprints), encoding="utf-8")
        paths.append(path)
    return paths


def write_config(root: Path, name: str, mode: str, pattern: str) -> Path:
    config = root / f"{name}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "run": {"mode": mode},
                "sources": [
                    {"type": "jsonl", "name": "news", "path": pattern, "fields": {"id": "id"}}
                ],
                "register": {"model_name": f"{name}-gpt"},
            }
        )
    )
    return config


def summary_of(run: dict[str, Any]) -> dict[str, Any]:
    stages = run["stages"]
    metrics = stages["evaluate"]["metrics"]
    registered = stages["register"]["registered"]
    shards = stages["shards"]["counts"]
    return {
        "val_bpb_first": metrics.get("val_bpb_first"),
        "val_bpb_new": metrics.get("val_bpb_new"),
        "start_val_bpb_new": metrics.get("start_val_bpb_new"),
        "promoted": bool(registered.get("promoted")),
        "version": registered.get("version"),
        "new_tokens": shards.get("new_train_tokens", shards.get("train_tokens")),
        "replay_tokens": shards.get("replay_tokens", 0),
        "steps": stages["pretrain"]["metrics"]["steps"],
        "shards": stages["shards"]["output"],
        "model": str(Path(stages["pretrain"]["output"]) / "final"),
        "tokenizer": stages["tokenizer"]["output"],
    }


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def plot(results: dict[str, list[dict]], scratch: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    days = list(range(1, DAYS + 1))
    for setup, style in zip(SETUPS, ("o-", "^-", "v--", "s--"), strict=True):
        rows = results[setup]
        axes[0].plot(days, [r["val_bpb_first"] for r in rows], style, label=setup)
        axes[1].plot(days, [r["val_bpb_new"] for r in rows], style, label=setup)
    axes[0].axhline(scratch["first"], color="grey", linestyle=":", label="from scratch, day 5")
    axes[1].plot([DAYS], [scratch["new"]], "k*", markersize=12, label="from scratch, day 5")
    axes[0].set_title("val bpb on the first day's held-out")
    axes[1].set_title("val bpb on each day's new held-out")
    for ax in axes:
        ax.set_xlabel("day (model version)")
        ax.set_xticks(days)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--tokens-per-day", type=int, default=100_000)
    parser.add_argument("--bbc", type=int, default=500)
    parser.add_argument("--ag", type=int, default=2500)
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny everything")
    args = parser.parse_args()
    if not NEWS.is_dir():
        print(f"skipped: {NEWS} is not present")
        return 0
    if args.quick:
        args.bbc, args.ag, args.tokens_per_day = 100, 300, 8_000
    root = args.workdir or Path(tempfile.mkdtemp(prefix="nightly-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    import os

    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    for name, value in (
        ("DO_NOT_TRACK", "1"),
        ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
        ("MLFLOW_DISABLE_TELEMETRY", "true"),
    ):
        os.environ.setdefault(name, value)
    from flows.local_server import start_local_server
    from flows.pipeline import pipeline_flow
    from flows.stack import use_running_prefect_server
    from pipeline.config import EvaluateConfig
    from pipeline.evaluate.increments import heldout_bpb

    use_running_prefect_server()
    start_local_server()
    started = time.time()
    rows = articles(args.bbc, args.ag)
    write_days(rows, root / "news")
    workdir = root / "work"
    budget = [f"train.tokens={args.tokens_per_day}"]
    results: dict[str, list[dict]] = {}
    for setup, extra in SETUPS.items():
        config = write_config(root, setup, "incremental", f"news-{setup}/*.jsonl")
        (root / f"news-{setup}").mkdir(exist_ok=True)
        results[setup] = []
        for day in range(1, DAYS + 1):  # the day's file arrives, the nightly run starts
            shutil.copyfile(
                root / "news" / f"day-{day}.jsonl", root / f"news-{setup}" / f"day-{day}.jsonl"
            )
            t0 = time.time()
            run = pipeline_flow(
                str(config), workdir=str(workdir), overrides=[*MODEL, *budget, *extra]
            )
            found = summary_of(run)
            found["seconds"] = round(time.time() - t0, 1)
            results[setup].append(found)
            print(f"{setup} day {day}: {json.dumps(found)}", flush=True)
            (root / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")

    # the upper bound: all five days at once, the first day's tokenizer, the same total tokens
    first_tokenizer = results["nightly"][0]["tokenizer"]
    config = write_config(root, "scratch", "full", "news/*.jsonl")
    t0 = time.time()
    run = pipeline_flow(
        str(config),
        workdir=str(workdir),
        overrides=[
            *MODEL,
            f"train.tokens={args.tokens_per_day * DAYS}",
            f"run.tokenizer_from={first_tokenizer}",
        ],
    )
    scratch_model = Path(run["stages"]["pretrain"]["output"]) / "final"
    scratch_seconds = round(time.time() - t0, 1)

    # every model of day 5, and the from-scratch one, on every day's held-out part
    evaluate = EvaluateConfig(val_batches=40)
    day_shards = [Path(r["shards"]) for r in results["nightly"]]
    finals = {f"{setup} day 5": Path(results[setup][-1]["model"]) for setup in SETUPS}
    finals["from scratch"] = scratch_model
    across = {
        name: [heldout_bpb(model, shards, evaluate) for shards in day_shards]
        for name, model in finals.items()
    }
    scratch = {"first": across["from scratch"][0], "new": across["from scratch"][-1]}

    lines = [
        "# Nightly increments: replay and the continuation schedule against restarts",
        "",
        f"`{' '.join(sys.argv)}` ({environment()}); {len(rows)} articles (BBC {args.bbc}, "
        f"AG News {args.ag}) in {DAYS} days, {REPRINTS} reprints a day after the first; "
        f"{args.tokens_per_day:,} train tokens a day; a 4 x 128 GPT (vocab 2048, block 128); "
        f"{time.time() - started:.0f} s in all.",
        "",
        "val bpb after each day (lower is better). first: the first day's held-out split; new: "
        "the day's own held-out part; start: the champion the day started from, on that part; "
        "moved: @champion moved to the day's version (rule: val_bpb = first held-out).",
        "",
    ]
    header = ["set-up", "day", "first", "new", "champion on new", "moved", "new / replay tokens"]
    table = []
    for setup in SETUPS:
        for day, r in enumerate(results[setup], start=1):
            table.append(
                [
                    setup,
                    str(day),
                    fmt(r["val_bpb_first"]),
                    fmt(r["val_bpb_new"]),
                    fmt(r["start_val_bpb_new"]),
                    "yes" if r["promoted"] else "no",
                    f"{r['new_tokens']:,} / {r['replay_tokens']:,}",
                ]
            )
    lines += [markdown_table(header, table), ""]
    lines += [
        f"From scratch on all {DAYS} days ({args.tokens_per_day * DAYS:,} tokens, "
        f"{scratch_seconds:.0f} s): first {fmt(scratch['first'])}, day-5 new "
        f"{fmt(scratch['new'])}.",
        "",
        "Day-5 models on every day's held-out part:",
        "",
        markdown_table(
            ["model", *[f"day {d + 1}" for d in range(DAYS)], "mean"],
            [
                [name, *[fmt(v) for v in values], fmt(sum(values) / len(values))]
                for name, values in across.items()
            ],
        ),
        "",
    ]
    for setup in SETUPS:
        rows_ = results[setup]
        better = all(
            b["val_bpb_first"] < a["val_bpb_first"] and b["val_bpb_new"] < b["start_val_bpb_new"]
            for a, b in zip(rows_, rows_[1:], strict=False)
        )
        mean = sum(across[f"{setup} day 5"]) / DAYS
        mean_scratch = sum(across["from scratch"]) / DAYS
        lines.append(
            f"- {setup}: each day better than the one before on both held-out sets: "
            f"{'yes' if better else 'no'}; champion moved on days "
            f"{[d + 1 for d, r in enumerate(rows_) if r['promoted']]}; day 5 against from "
            f"scratch (mean over the days' held-out parts): {mean:.4f} vs {mean_scratch:.4f} "
            f"({(mean / mean_scratch - 1):+.1%}); first held-out "
            f"{rows_[-1]['val_bpb_first']:.4f} vs {scratch['first']:.4f} "
            f"({rows_[-1]['val_bpb_first'] / scratch['first'] - 1:+.1%})."
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        RESULTS.write_text(text, encoding="utf-8")

    import mlflow

    png = root / "nightly.png"
    plot(results, scratch, png)
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment("llmpipe")
    with mlflow.start_run(run_name="nightly-bench"):
        for setup in SETUPS:
            for day, r in enumerate(results[setup], start=1):
                mlflow.log_metric(f"{setup}_val_bpb_first", r["val_bpb_first"], step=day)
                mlflow.log_metric(f"{setup}_val_bpb_new", r["val_bpb_new"], step=day)
        mlflow.log_metric("scratch_val_bpb_first", scratch["first"], step=DAYS)
        mlflow.log_metric("scratch_val_bpb_new", scratch["new"], step=DAYS)
        mlflow.log_artifact(str(png), "plots")
        mlflow.log_text(text, "nightly.md")
    print(f"plot: {png} (MLflow run nightly-bench, {os.environ['MLFLOW_TRACKING_URI']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
