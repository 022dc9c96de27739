"""The evaluation suite: the configured tasks run on one model, one table out.

In: a model folder (weights, model config, tokenizer), the `evaluate` config, the folder
relative task paths resolve from, and for the held-out task the val token shards with their
bytes per token. Out, in `out_dir`:

- `eval_table.csv` / `eval_table.json`: one row per (task, metric) with value, standard error,
  examples scored, the method, and a note (skipped tasks are rows too, with the reason);
- `metrics.json`: the same numbers flat, `<task>_<metric>` (what MLflow and the registry get);
- `generations.jsonl`, `<task>_examples.jsonl` (per-question scores), `_quarantine.jsonl`;

and the return value: {"metrics", "table" (the rows), "generations", "skipped", "quarantined"}.
`eval_table(result)` gives the table as a pandas DataFrame.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from pipeline.config import ConfigError, EvaluateConfig, task_name
from pipeline.evaluate.scoring import LogLikelihoodScorer
from pipeline.evaluate.tasks import RUNNERS, EvalContext, TaskSkipped
from pipeline.generate import EOT, load_generator
from pipeline.quarantine import Quarantine

TABLE_COLUMNS = ["task", "metric", "value", "stderr", "examples", "method", "note"]


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def select_tasks(cfg: EvaluateConfig, names: list[str] | None) -> list[Any]:
    """The configured tasks, or those named (in the order named); unknown names raise."""
    if not names:
        return list(cfg.tasks)
    by_name = {task_name(t): t for t in cfg.tasks}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(
            f"unknown task(s) {', '.join(unknown)}; configured in evaluate.tasks: "
            f"{', '.join(by_name)}"
        )
    return [by_name[n] for n in names]


def run_evaluation(
    model_dir: str | Path,
    cfg: EvaluateConfig,
    base_dir: str | Path,
    out_dir: Path,
    shards_dir: Path | None = None,
    bytes_per_token: float | None = None,
    tasks: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    net, tokenizer = load_generator(str(model_dir))
    net.to(pick_device(cfg.device))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    eot_id = tokenizer.token_to_id(EOT)
    scorer = LogLikelihoodScorer(
        net,
        lambda text: tokenizer.encode(text).ids,
        eot_id=eot_id if eot_id is not None else 0,
        block_size=net.config.block_size,
        batch_size=cfg.batch_size,
    )
    rows: list[dict[str, Any]] = []
    metrics: dict[str, float] = {"num_params": float(sum(p.numel() for p in net.parameters()))}
    rows.append(_row("model", "num_params", metrics["num_params"], method="parameter count"))
    generations: list[dict[str, str]] = []
    skipped: list[dict[str, str]] = []
    with Quarantine(out_dir) as quarantine:
        ctx = EvalContext(
            net, tokenizer, scorer, cfg, str(base_dir), quarantine, shards_dir, bytes_per_token
        )
        for task in select_tasks(cfg, tasks):
            name = task_name(task)
            started = time.time()
            try:
                result = RUNNERS[task.type](task, ctx)
            except TaskSkipped as exc:
                log(f"evaluate: {name} skipped: {exc}")
                skipped.append({"task": name, "reason": str(exc)})
                rows.append(_row(name, "", None, note=f"skipped: {exc}"))
                continue
            seconds = time.time() - started
            log(f"evaluate: {name}: {result.examples} examples in {seconds:.1f} s")
            for metric, value in result.metrics.items():
                if not math.isnan(value):  # none scored: the table row says so, no NaN metric
                    metrics[f"{name}_{metric}"] = value
                rows.append(
                    _row(
                        name,
                        metric,
                        value,
                        result.stderr.get(metric),
                        result.examples,
                        result.method,
                    )
                )
            if result.generations:
                generations.extend(result.generations)
                rows.append(
                    _row(name, "samples", len(result.generations), None, None, result.method)
                )
            if result.details:
                _write_jsonl(out_dir / f"{name}_examples.jsonl", result.details)
        quarantined = dict(quarantine.counts)
    _write_jsonl(out_dir / "generations.jsonl", generations)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    table.to_csv(out_dir / "eval_table.csv", index=False)
    (out_dir / "eval_table.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return {
        "metrics": metrics,
        "table": rows,
        "generations": generations,
        "skipped": skipped,
        "quarantined": quarantined,
    }


def eval_table(result: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(result["table"], columns=TABLE_COLUMNS)


def _row(
    task: str,
    metric: str,
    value: float | None,
    stderr: float | None = None,
    examples: int | None = None,
    method: str = "",
    note: str = "",
) -> dict[str, Any]:
    def clean(x: float | None) -> float | None:
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else x

    if value is not None and clean(value) is None and not note:
        note = "nothing scored"
    return {
        "task": task,
        "metric": metric,
        "value": clean(value),
        "stderr": clean(stderr),
        "examples": examples,
        "method": method,
        "note": note,
    }


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
