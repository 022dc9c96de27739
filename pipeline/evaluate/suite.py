"""The evaluation suite: the configured tasks run on one model, one table out.

In: a model folder (weights, model config, tokenizer), the `evaluate` config, the folder
relative task paths resolve from, and for the held-out task the val token shards with their
bytes per token. Out, in `out_dir`:

- `eval_table.csv` / `eval_table.json`: one row per (task, metric) with value, standard error,
  examples scored, the method, and a note (skipped tasks are rows too, with the reason);
- `metrics.json`: the same numbers flat, `<task>_<metric>` (what MLflow and the registry get);
- `generations.jsonl`, `<task>_examples.jsonl` (per-question scores), `_quarantine.jsonl`;

and the return value: {"metrics", "table" (the rows), "generations", "skipped", "quarantined"}.
After a fine-tune, the application tasks (qa, summarization, translation, classification) can
also be scored on the model it started from: rows `base_<task>`, metrics `base_<task>_<metric>`.
`eval_table(result)` gives the table as a pandas DataFrame.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from pipeline.config import ApplicationTask, ConfigError, EvaluateConfig, task_name
from pipeline.eval_files import TaskSkipped
from pipeline.evaluate.runners import runner_for
from pipeline.evaluate.scoring import LogLikelihoodScorer
from pipeline.evaluate.tasks import EvalContext
from pipeline.generate import load_generator
from pipeline.quarantine import OnceQuarantine, Quarantine
from pipeline.special_tokens import EOT_TOKEN as EOT
from pipeline.train.ticks import tick_line, ticks_requested

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
    base_model_dir: str | Path | None = None,
    contamination: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score the model on the selected tasks. With `base_model_dir` (the model a fine-tune
    started from), the application tasks are scored on it too, as `base_<task>` rows and
    `base_<task>_<metric>` metrics: the before and after of fine-tuning in one table.
    With `contamination` (the decontaminate stage's report), each task's rows say whether its
    examples were found in the training data (a `contamination` column, and a
    `<task>_contaminated_fraction` metric)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    selected = select_tasks(cfg, tasks)
    scored = Scored()
    with OnceQuarantine(out_dir) as quarantine:  # base tasks read the same files
        _score_model(
            model_dir,
            selected,
            cfg,
            base_dir,
            out_dir,
            quarantine,
            scored,
            log,
            shards_dir,
            bytes_per_token,
        )
        applied = [t for t in selected if isinstance(t, ApplicationTask)]
        if base_model_dir is not None and applied:
            log(f"evaluate: scoring the model fine-tuning started from ({base_model_dir})")
            _score_model(
                base_model_dir,
                applied,
                cfg,
                base_dir,
                out_dir,
                quarantine,
                scored,
                log,
                prefix="base_",
            )
        quarantined = dict(quarantine.counts)
    columns = TABLE_COLUMNS
    if contamination is not None:
        mark_contamination(scored, contamination)
        columns = [*TABLE_COLUMNS, "contamination"]
    _write_jsonl(out_dir / "generations.jsonl", scored.generations)
    (out_dir / "metrics.json").write_text(json.dumps(scored.metrics, indent=2), encoding="utf-8")
    table = pd.DataFrame(scored.rows, columns=columns)
    table.to_csv(out_dir / "eval_table.csv", index=False)
    (out_dir / "eval_table.json").write_text(json.dumps(scored.rows, indent=2), encoding="utf-8")
    return {
        "metrics": scored.metrics,
        "table": scored.rows,
        "generations": scored.generations,
        "skipped": scored.skipped,
        "quarantined": quarantined,
    }


@dataclass
class Scored:
    rows: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    generations: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def _score_model(
    model_dir: str | Path,
    selected: list[Any],
    cfg: EvaluateConfig,
    base_dir: str | Path,
    out_dir: Path,
    quarantine: Quarantine,
    scored: Scored,
    log: Callable[[str], None],
    shards_dir: Path | None = None,
    bytes_per_token: float | None = None,
    prefix: str = "",
) -> None:
    """Run `selected` tasks on one model, adding rows and metrics named `prefix + task`."""
    net, tokenizer = load_generator(str(model_dir))
    net.to(pick_device(cfg.device))
    eot_id = tokenizer.token_to_id(EOT)
    scorer = LogLikelihoodScorer(
        net,
        lambda text: tokenizer.encode(text).ids,
        eot_id=eot_id if eot_id is not None else 0,
        block_size=net.config.block_size,
        batch_size=cfg.batch_size,
    )
    num_params = float(sum(p.numel() for p in net.parameters()))
    if not prefix:
        scored.metrics["num_params"] = num_params
        scored.rows.append(_row("model", "num_params", num_params, method="parameter count"))
    ctx = EvalContext(
        net, tokenizer, scorer, cfg, str(base_dir), quarantine, shards_dir, bytes_per_token
    )
    # `@progress` ticks for the orchestrator's bar (pipeline.train.ticks): the model's tasks
    ticks = ticks_requested() and not prefix
    for number, task in enumerate(selected):
        if ticks:
            log(tick_line(number, len(selected), "tasks"))
        name = prefix + task_name(task)
        started = time.time()
        try:
            result = runner_for(task)(task, ctx)
        except TaskSkipped as exc:
            log(f"evaluate: {name} skipped: {exc}")
            scored.skipped.append({"task": name, "reason": str(exc)})
            scored.rows.append(_row(name, "", None, note=f"skipped: {exc}"))
            continue
        seconds = time.time() - started
        log(f"evaluate: {name}: {result.examples} examples in {seconds:.1f} s")
        for metric, value in result.metrics.items():
            if not math.isnan(value):  # none scored: the table row says so, no NaN metric
                scored.metrics[f"{name}_{metric}"] = value
            scored.rows.append(
                _row(name, metric, value, result.stderr.get(metric), result.examples, result.method)
            )
        if result.generations:
            scored.generations.extend(result.generations)
            scored.rows.append(
                _row(name, "samples", len(result.generations), None, None, result.method)
            )
        if result.details:
            _write_jsonl(out_dir / f"{name}_examples.jsonl", result.details)
    if ticks:
        log(tick_line(len(selected), len(selected), "tasks"))


def mark_contamination(scored: Scored, contamination: dict[str, Any]) -> None:
    """Each row of a checked task gets "clean" or "N% contaminated" (decontaminate's report)."""
    from pipeline.decontaminate import contamination_label

    sets, action = contamination.get("sets") or {}, contamination.get("action", "drop")
    for row in scored.rows:
        entry = sets.get(row["task"].removeprefix("base_"))
        row["contamination"] = contamination_label(entry, action) if entry else ""
    for name, entry in sets.items():
        if "found_fraction" in entry and any(r["task"] == name for r in scored.rows):
            scored.metrics[f"{name}_contaminated_fraction"] = entry["found_fraction"]


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
