"""What a person sees of a pipeline run in the Prefect and MLflow UIs, beyond the raw records.

In: the flow run's parameters, the stages' log lines, manifests and MLflow run ids. Out:
- `flow_run_name()`: the flow run's name says what ran: config name, mode, date;
- `TrainingProgress`: turns the trainer's `step N/M` lines into a Prefect progress artifact;
- links between the two UIs (`mlflow_run_url`, `mlflow_model_url`, `prefect_flow_run_url`);
- `log_run_plots`: the loss curve and an eval-summary plot as images of the MLflow parent run;
- `describe_model_version`: the registry page shows each version's eval metrics and aliases.
Failures here never fail a stage: a progress bar is not worth a lost training run.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.tracking.runs import Tracker, redact

STEP_LINE = re.compile(r"^step (\d+)/(\d+)\b(.*)$")


def run_mode(config: Any, only: list[str] | None = None, start: str | None = None) -> str:
    """`full`, `incremental`, `only a,b` or `from X`: how much of the DAG this run covers."""
    mode = getattr(getattr(config, "run", None), "mode", None) or "full"
    if only:
        return f"{mode}, only {','.join(only)}"
    if start:
        return f"{mode}, from {start}"
    return str(mode)


def flow_run_name() -> str:
    """`<config name> · <mode> · <UTC date and time>`, from the flow run's parameters."""
    from prefect.runtime import flow_run

    from pipeline.config import load_config

    params = flow_run.parameters or {}
    config_path = str(params.get("config_path", "pipeline"))
    try:
        config = load_config(config_path, params.get("overrides") or [])
        name = config.name
    except Exception:  # the flow itself reports a bad config; the name just falls back
        config, name = None, Path(config_path).stem
    mode = run_mode(config, params.get("only"), params.get("start"))
    return f"{name} · {mode} · {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"


class TrainingProgress:
    """A stage's log function that also keeps a Prefect progress artifact up to date.

    The trainer prints `step N/M | train_loss ...` lines (pipeline.train.progress); each one
    moves the progress bar of the artifact `llmpipe-<stage>-progress` and its description.
    """

    def __init__(self, stage: str, log: Callable[[str], None]):
        self.stage = stage
        self.log = log
        self.artifact_id: Any = None
        self.percent = -1.0

    def __call__(self, line: str) -> None:
        self.log(line)
        match = STEP_LINE.match(line.strip())
        if not match:
            return
        step, total = int(match.group(1)), int(match.group(2))
        percent = min(100.0, 100.0 * step / max(total, 1))
        if percent <= self.percent:
            return
        self.percent = percent
        description = f"{self.stage}: step {step:,} of {total:,}{match.group(3)}".strip()
        self._show(percent, description)

    def finish(self) -> None:
        if self.artifact_id is not None and self.percent < 100:
            self._show(100.0, f"{self.stage}: done")

    def _show(self, percent: float, description: str) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        try:
            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(
                    progress=percent,
                    key=f"llmpipe-{self.stage}-progress",
                    description=description,
                )
            else:
                update_progress_artifact(self.artifact_id, percent, description=description)
        except Exception as exc:  # the API may be busy; training goes on
            self.log(f"(progress artifact not updated: {exc})")


# ------------------------------------------------------------------------------ UI links


def _mlflow_base(tracking_uri: str) -> str | None:
    if tracking_uri.startswith(("http://", "https://")):
        return redact(tracking_uri).replace("***:***@", "").rstrip("/")
    return None


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    base = _mlflow_base(tracking_uri)
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}" if base else None


def mlflow_model_url(tracking_uri: str, name: str, version: str | int | None = None) -> str | None:
    base = _mlflow_base(tracking_uri)
    if not base:
        return None
    return f"{base}/#/models/{name}" + (f"/versions/{version}" if version else "")


def prefect_flow_run_url(flow_run_id: str) -> str | None:
    """The flow run's page, when a Prefect server (not the temporary local one) is in use."""
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        return None
    from prefect.settings import PREFECT_UI_URL

    ui = PREFECT_UI_URL.value() or api.rstrip("/").removesuffix("/api")
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}"


def link(text: str, url: str | None) -> str:
    return f"[{text}]({url})" if url else f"`{text}`"


# ------------------------------------------------------------------------ MLflow extras


def log_run_plots(
    tracker: Tracker, parent_id: str, results: dict[str, dict[str, Any]], scratch: Path
) -> list[str]:
    """Put the loss curve and an eval-summary plot on the parent run (under `plots/`)."""
    from pipeline.tracking.plots import eval_summary_plot

    logged = []
    for stage, folder in (("pretrain", "plots"), ("finetune", "plots/finetune")):
        trained = results.get(stage)
        if not trained:
            continue
        curve = Path(trained["output"]) / (trained.get("files") or {}).get(
            "loss_curve", "loss_curve.png"
        )
        if curve.is_file():
            tracker.log_artifact(parent_id, curve, folder)
            logged.append(f"{folder}/{curve.name}")
    evaluation = results.get("evaluate")
    base = {
        k.removeprefix("base_"): v
        for k, v in ((evaluation or {}).get("metrics") or {}).items()
        if k.startswith("base_")
    }
    if base:  # fine-tuned vs the model it started from, on the application tasks
        scratch.mkdir(parents=True, exist_ok=True)
        path = eval_summary_plot(
            {k: v for k, v in evaluation["metrics"].items() if k in base},
            scratch / "finetune_before_after.png",
            title="Fine-tuning: task metrics before and after",
            baseline=base,
            baseline_label="before",
            label="fine-tuned",
        )
        if path is not None:
            tracker.log_artifact(parent_id, path, "plots")
            logged.append("plots/finetune_before_after.png")
    if evaluation and evaluation.get("metrics"):
        baseline, label = _champion_metrics(tracker, results.get("register"))
        scratch.mkdir(parents=True, exist_ok=True)
        path = eval_summary_plot(
            evaluation["metrics"],
            scratch / "eval_summary.png",
            title="Evaluation",
            baseline=baseline,
            baseline_label=label,
        )
        if path is not None:
            tracker.log_artifact(parent_id, path, "plots")
            logged.append("plots/eval_summary.png")
    return logged


def _champion_metrics(
    tracker: Tracker, register: dict[str, Any] | None
) -> tuple[dict[str, float] | None, str]:
    """The metrics of the champion this run was compared with (from its version tags)."""
    registered = (register or {}).get("registered") or {}
    previous = registered.get("previous_champion")
    if not previous:
        return None, "champion"
    try:
        version = tracker.client.get_model_version(registered["model_name"], str(previous))
    except Exception:
        return None, "champion"
    values = {}
    for key, value in version.tags.items():
        try:
            values[key] = float(value)
        except ValueError:
            continue
    return values, f"champion v{previous}"


def describe_model_version(tracker: Tracker, registered: dict[str, Any], mode: str) -> None:
    """A version description that the registry page shows: its metric, alias and rivals."""
    name, number = registered["model_name"], str(registered["version"])
    metrics = {}
    for key, value in tracker.client.get_model_version(name, number).tags.items():
        try:
            metrics[key] = float(value)
        except ValueError:
            continue
    shown = ", ".join(
        f"{k} {float(v):.4g}"
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    )
    verdict = (
        "promoted to @champion"
        if registered.get("promoted")
        else f"@challenger (champion v{registered.get('previous_champion')} has "
        f"{registered.get('previous_champion_metric')})"
    )
    text = f"{registered['metric']} = {registered['value']:.4f}: {verdict}. Eval metrics: {shown}."
    tracker.client.update_model_version(name, number, description=text[:4000])
    champion = number if registered.get("promoted") else registered.get("previous_champion")
    tracker.client.update_registered_model(
        name,
        description=f"GPT checkpoints registered by the llmpipe pipeline. Use "
        f"`models:/{name}@champion` (now version {champion}); promotion rule: "
        f"{registered['metric']}, the {'lower' if mode == 'min' else 'higher'} wins.",
    )


def run_summary_markdown(
    config_name: str,
    experiment: str,
    experiment_id: str,
    tracking_uri: str,
    parent_id: str,
    results: dict[str, dict[str, Any]],
) -> str:
    """The flow run's overview: every stage with its state, time, output and MLflow run."""
    lines = [
        f"# {config_name}: where this run is tracked",
        f"MLflow {link('pipeline run ' + parent_id[:8], mlflow_run_url(tracking_uri, experiment_id, parent_id))} "
        f"in experiment `{experiment}` (id {experiment_id}), tracking URI `{_mlflow_base(tracking_uri) or redact(tracking_uri)}`.",
    ]
    registered = (results.get("register") or {}).get("registered")
    if registered:
        lines.append(
            f"Model {link(registered['model_name'] + ' v' + str(registered['version']), mlflow_model_url(tracking_uri, registered['model_name'], registered['version']))}: "
            f"{registered['metric']} = {registered['value']:.4f}, "
            + ("now `@champion`." if registered.get("promoted") else "kept as `@challenger`.")
        )
    lines += ["", "| stage | state | seconds | fingerprint | MLflow run |", "|---|---|---|---|---|"]
    for name, result in results.items():
        run_id = result.get("stage_run_id", "")
        url = mlflow_run_url(tracking_uri, experiment_id, run_id) if run_id else None
        state = "cached" if result.get("cached") else "ran"
        lines.append(
            f"| {name} | {state} | {float(result.get('seconds') or 0):.1f} | "
            f"`{result.get('fingerprint', '')}` | {link(run_id[:8], url)} |"
        )
    return "\n".join(lines)
