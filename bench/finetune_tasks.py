"""What fine-tuning does to the quickstart model, task by task, on the CPU.

The quickstart-finetune pipeline (configs/quickstart-finetune.yaml: the 4 x 128 GPT pretrained on
the bundled sample, 300 steps) is fine-tuned on one task at a time: sentiment (SST-2
classification), extractive QA (SQuAD 2.0), summarization (XSum), translation (FLORES en -> de);
then on sentiment + QA mixed (the config as shipped), and on sentiment with LoRA (rank 8, at the
config's learning rate and at 10x it) instead of full fine-tuning. Each run's evaluate stage
scores the task's held-out split on the fine-tuned model and, with `compare_base`, on the
pretrained model it started from (zero-shot): before and after side by side, from the same
evaluation code.

    .venv/bin/python bench/finetune_tasks.py [--workdir DIR] [--steps 300] [--limit N]

All runs share one work dir, so ingest .. pretrain run once and every fine-tune starts from the
same pretrained model (the stage fingerprints make later runs reuse them; a rerun with the same
--workdir reuses everything). No MLflow (tracking_uri=None), no register stage. Prints a table
and writes bench/results/finetune_tasks.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml  # noqa: E402
from train_common import environment, markdown_table  # noqa: E402

from pipeline.config import PipelineConfig, validate_config  # noqa: E402
from pipeline.dag import plan, run_stage  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "quickstart-finetune.yaml"
RESULTS = Path(__file__).resolve().parent / "results" / "finetune_tasks.md"

# The two tasks the config does not hold (paths relative to configs/, like the config's).
XSUM = {
    "type": "summarization",
    "name": "xsum",
    "path": "../data/sample/finetune/xsum_sample.jsonl",
    "article_field": "document",
    "summary_field": "summary",
    "eval_fraction": 0.2,
    "max_new_tokens": 32,
}
FLORES = {
    "type": "translation",
    "name": "flores_en_de",
    "path": "../data/sample/finetune/flores_en_de_sample.jsonl",
    "source_lang": "en",
    "target_lang": "de",
    "eval_fraction": 0.2,
    "max_new_tokens": 64,
}
METRICS = {
    "classification": ["acc", "macro_f1"],
    "qa": ["exact_match", "f1", "has_answer_f1", "no_answer_acc"],
    "summarization": ["rouge1", "rouge2", "rougeL"],
    "translation": ["bleu", "chrf"],
}
LORA = {"rank": 8, "alpha": 16.0}
LORA_LR = {"learning_rate": 1.0e-2, "min_lr": 1.0e-3}
# (run label, task names, LoRA settings or None, finetune.train changes)
RUNS = [
    ("sentiment", ["sentiment"], None, {}),
    ("squad", ["squad"], None, {}),
    ("xsum", ["xsum"], None, {}),
    ("flores_en_de", ["flores_en_de"], None, {}),
    ("sentiment + squad (mixed)", ["sentiment", "squad"], None, {}),
    # extractive QA is the hardest job for this model: the same run for longer
    (
        "squad, 1000 steps",
        ["squad"],
        None,
        {"max_steps": 1000, "val_every_steps": 250, "checkpoint_every_steps": 250},
    ),
    ("sentiment, LoRA r=8", ["sentiment"], LORA, {}),
    # LoRA usually wants a larger learning rate than full fine-tuning: the same run at 10x
    ("sentiment, LoRA r=8, lr 1e-2", ["sentiment"], LORA, LORA_LR),
    # adapters plus the (tied) token embedding: what the model needs to move its answer words
    ("sentiment, LoRA r=8 + embeddings", ["sentiment"], {**LORA, "train_embeddings": True}, {}),
]


def base_raw(workdir: Path, steps: int | None, pretrain_steps: int | None) -> dict[str, Any]:
    raw = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))  # anchors already expanded
    raw["base_dir"] = str(CONFIG.parent)
    raw["workdir"] = str(workdir)
    if steps is not None:
        raw["finetune"]["train"]["max_steps"] = steps
    if pretrain_steps is not None:
        raw["train"]["max_steps"] = pretrain_steps
    return raw


def run_config(
    raw: dict[str, Any],
    names: list[str],
    lora: dict | None,
    train: dict[str, Any],
    limit: int | None,
) -> PipelineConfig:
    """The config with only `names` fine-tuned on and evaluated (no heldout, no generations)."""
    raw = copy.deepcopy(raw)
    tasks = {t["name"]: t for t in raw["finetune"]["tasks"] + [XSUM, FLORES]}
    chosen = [copy.deepcopy(tasks[n]) for n in names]
    raw["finetune"]["tasks"] = chosen
    raw["finetune"]["lora"] = lora
    raw["finetune"]["train"].update(train)
    raw["evaluate"]["tasks"] = copy.deepcopy(chosen)
    raw["evaluate"]["compare_base"] = True
    raw["evaluate"]["limit"] = limit
    return validate_config(raw)


class Log:
    """Every line to the run's log file; stage progress lines also to stdout."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = path.open("a", encoding="utf-8")

    def __call__(self, line: str) -> None:
        self.handle.write(line + "\n")
        self.handle.flush()
        if line.startswith(("finetune:", "evaluate:", "done:", "LoRA")):
            print("    " + line, flush=True)


def run_pipeline(config: PipelineConfig, workdir: Path, log: Log) -> dict[str, dict]:
    """Run every stage up to evaluate (register needs MLflow); the manifests by stage."""
    manifests = {}
    for planned in plan(config, workdir):
        if planned.name == "register":
            continue
        started = time.time()
        result = run_stage(planned, config, tracking_uri=None, log=log)
        state = "reused" if result.reused else f"{time.time() - started:.0f} s"
        print(f"  {planned.name}: {state} ({planned.output.path})", flush=True)
        manifests[planned.name] = {**result.to_dict(), "path": str(planned.output.path)}
    return manifests


def short(text: str, width: int = 90) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= width else text[: width - 3] + "..."


def shown(prediction: str) -> str:
    return f"`{short(prediction)}`" if prediction.strip() else "(empty)"


def predictions(folder: Path, task: str, examples: int) -> list[list[str]]:
    """The first held-out predictions of both models, and each model's most frequent one."""
    tuned = [json.loads(line) for line in (folder / f"{task}_examples.jsonl").open()]
    base = [json.loads(line) for line in (folder / f"base_{task}_examples.jsonl").open()]
    rows = []
    for model, found in (("zero-shot", base), ("fine-tuned", tuned)):
        common = Counter(row["prediction"] for row in found).most_common(1)[0]
        share = f"{common[1]} / {len(found)}"
        rows.append([task, model, "most frequent", f"{shown(common[0])} ({share})"])
    for n, (b, t) in enumerate(zip(base[:examples], tuned[:examples], strict=True)):
        rows.append([task, "reference", f"#{n + 1}", short(t["references"][0])])
        rows.append([task, "zero-shot", f"#{n + 1}", shown(b["prediction"])])
        rows.append([task, "fine-tuned", f"#{n + 1}", shown(t["prediction"])])
    return rows


def fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if metric in ("bleu", "chrf") else f"{value:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--steps", type=int, default=None, help="fine-tune steps (config: 300)")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="(config: 300)")
    parser.add_argument("--limit", type=int, default=None, help="held-out examples per task")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        raw = base_raw(workdir, args.steps, args.pretrain_steps)
        rows, runs, samples, setup = [], [], [], {}
        for label, names, lora, train in RUNS:
            print(f"run: {label}", flush=True)
            config = run_config(raw, names, lora, train, args.limit)
            slug = "".join(c if c.isalnum() else "_" for c in label)
            log = Log(workdir / "bench-logs" / f"{slug}.log")
            manifests = run_pipeline(config, workdir, log)
            pretrain = manifests["pretrain"]["metrics"]
            setup = {
                "params": pretrain["num_params"],
                "pretrain_steps": pretrain["steps"],
                "pretrain_val_loss": pretrain["val_loss"],
                "pretrain_seconds": pretrain["wall_seconds"],
            }
            ft = manifests["finetune"]
            ft_metrics = ft["metrics"]
            metrics = manifests["evaluate"]["metrics"]
            counts = ft["counts"]["examples_by_task"]
            runs.append(
                [
                    label,
                    f"{ft_metrics['steps']}",
                    ", ".join(f"{n} {counts[n]['train']} / {counts[n]['eval']}" for n in names),
                    f"{ft_metrics.get('trainable_params', ft_metrics['num_params']):,}",
                    f"{ft_metrics.get('train_truncated', 0)}",
                    f"{ft_metrics['val_loss']:.3f}",
                    f"{ft_metrics['wall_seconds']:.0f}",
                    f"{ft['seconds']:.0f}",
                ]
            )
            for task in config.evaluate.tasks:
                if task.type != "classification" and len(names) == 1:
                    evaluated = Path(manifests["evaluate"]["path"])
                    samples += predictions(evaluated, task.name, 2)
                for metric in METRICS[task.type]:
                    before = metrics.get(f"base_{task.name}_{metric}")
                    after = metrics.get(f"{task.name}_{metric}")
                    change = "-"
                    if before is not None and after is not None:
                        change = (
                            f"{after - before:+.2f}"
                            if metric in ("bleu", "chrf")
                            else (f"{after - before:+.3f}")
                        )
                    rows.append(
                        [label, task.name, metric, fmt(before, metric), fmt(after, metric), change]
                    )
                    print(
                        f"    {task.name} {metric}: {fmt(before, metric)} -> "
                        f"{fmt(after, metric)} ({change})",
                        flush=True,
                    )

    scores = markdown_table(
        ["fine-tuned on", "task", "metric", "zero-shot (pretrained)", "fine-tuned", "change"], rows
    )
    per_run = markdown_table(
        [
            "fine-tuned on",
            "steps",
            "examples train / held-out",
            "trained params",
            "train examples truncated to 256 tokens",
            "final val loss (held-out responses)",
            "training wall s",
            "finetune stage wall s",
        ],
        runs,
    )
    ft_train = raw["finetune"]["train"]
    options = " ".join(
        f"--{k.replace('_', '-')} {v}"
        for k, v in (
            ("steps", args.steps),
            ("pretrain_steps", args.pretrain_steps),
            ("limit", args.limit),
        )
        if v is not None
    )
    report = (
        "# Fine-tuning the quickstart model, task by task (CPU)\n\n"
        f"`python bench/finetune_tasks.py{' ' + options if options else ''}`; {environment()} "
        "(2 cores shared with other jobs: wall times are rough).\n\n"
        f"Model: the quickstart GPT of `configs/quickstart-finetune.yaml` (4 layers x 128, "
        f"context 256, BPE 4096; {setup['params'] / 1e6:.2f}M parameters), pretrained "
        f"{setup['pretrain_steps']} steps on the bundled sample (val loss "
        f"{setup['pretrain_val_loss']:.3f}, {setup['pretrain_seconds']:.0f} s), once, and every "
        "run below starts from it. Fine-tuning: the config's `finetune.train` for every run: "
        f"{ft_train['max_steps']} steps, batch {ft_train['batch_size']} rows x 256 tokens, "
        f"packing, lr {ft_train['learning_rate']:g} -> {ft_train['min_lr']:g} cosine, warmup "
        f"{ft_train['warmup_steps']}, no weight decay, fp32; loss on response tokens only. LoRA: "
        f"rank {LORA['rank']}, alpha {LORA['alpha']:g}, on attention and MLP projections, at the "
        "same learning rate and (last run) at 10x it.\n\n"
        "Zero-shot = the pretrained model on the same held-out examples, prompts and scoring "
        "(`evaluate.compare_base`: `base_<task>_<metric>`). Held-out splits: SST-2 dev (550), "
        "and by hash 20% of the SQuAD 2.0 sample (424 questions), of the XSum sample (150) and "
        f"of the FLORES en-de sample (300). Tasks: {json.dumps(XSUM)}; {json.dumps(FLORES)}; "
        "sentiment and squad as in the config (sentiment: log-likelihood of ' negative' / "
        "' positive'; the others: greedy generation). acc, macro_f1, exact_match, f1, ROUGE: "
        "0..1; BLEU, chrF: 0..100.\n\n" + scores + "\n\n" + per_run + "\n"
    )
    sample_table = markdown_table(["task", "model", "example", "prediction"], samples)
    report += (
        "\nWhat the generative tasks produce (greedy, cut at the first newline; the single-task "
        "runs): each model's most frequent prediction over the held-out split, and the first "
        "held-out examples.\n\n" + sample_table + "\n"
    )
    print("\n" + scores + "\n\n" + per_run + "\n\n" + sample_table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
