"""What a person sees of a pipeline run in the Prefect and MLflow UIs, beyond the raw records.

In: the flow run's parameters, the stages' log lines, manifests and MLflow run ids. Out:
- `flow_run_name()`: the flow run's name says what ran: config name, mode, date;
- `StageProgress`: turns the trainer's `step N/M` lines and `@progress` ticks into a terminal
  progress bar with the time left, ETAs in the log lines, and a Prefect progress artifact;
- links between the two UIs (`mlflow_run_url`, `mlflow_model_url`, `prefect_flow_run_url`);
- `log_run_plots`: the loss curve and an eval-summary plot as images of the MLflow parent run;
- `describe_model_version`: the registry page shows each version's eval metrics and aliases.
Failures here never fail a stage: a progress bar is not worth a lost training run.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.tracking.runs import Tracker, redact
from pipeline.train.ticks import parse_tick

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


def format_duration(seconds: float) -> str:
    """`45 s`, `3 min 05 s`, `1 h 02 min`: how long, for a person."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class StageProgress:
    """A stage's log function that shows how far the stage is and how long it has left.

    The trainer prints `step N/M | train_loss ...` lines every few steps and, when asked
    (pipeline.train.ticks), `@progress N/M` ticks about once a second. From both:
    - in a terminal, a tqdm bar on stderr (steps, elapsed, time left), kept below the log
      lines (cleared before each one, redrawn after);
    - each `step` line is logged with the time left appended (`... | ETA 1 min 20 s`), so a
      log file or the Prefect UI says it too;
    - the Prefect progress artifact `llmpipe-<stage>-progress` moves, with the same text.
    Ticks are never logged. Other lines pass through unchanged.
    """

    ARTIFACT_EVERY_SECONDS = 5.0

    def __init__(
        self,
        stage: str,
        log: Callable[[str], None],
        bar: bool | None = None,
        bar_file: Any = None,
    ):
        self.stage = stage
        self.log = log
        self.artifact_id: Any = None
        self.percent = -1.0
        self._artifact_time = 0.0
        self._bar_file = bar_file or sys.stderr
        if bar is None:
            bar = os.environ.get("LLMPIPE_PROGRESS_BAR", "1") != "0" and _is_terminal(
                self._bar_file
            )
        self._bar_wanted = bar
        self.bar: Any = None
        self._first: tuple[int, float] | None = None  # (step, time) of the first step seen
        self._step = 0

    def __call__(self, line: str) -> None:
        tick = parse_tick(line)
        if tick is not None:
            done, total, unit = tick
            self._advance(done, total, unit)
            self._update_artifact(done, total, force=False, unit=unit)
            return
        match = STEP_LINE.match(line.strip())
        if match:
            step, total = int(match.group(1)), int(match.group(2))
            self._advance(step, total)
            eta = self.eta_text(step, total)
            self._log(f"{line.rstrip()} | {eta}" if eta else line)
            self._update_artifact(step, total, force=True, detail=match.group(3))
            return
        self._log(line)

    def eta_seconds(self, step: int, total: int, now: float | None = None) -> float | None:
        """Time left at the pace since the first step seen (None before there is a pace)."""
        if self._first is None or step <= self._first[0]:
            return None
        now = time.monotonic() if now is None else now
        rate = (step - self._first[0]) / max(now - self._first[1], 1e-9)
        return max(0, total - step) / rate

    def eta_text(self, step: int, total: int) -> str:
        left = self.eta_seconds(step, total)
        if left is None:
            return ""
        return "done" if step >= total else f"ETA {format_duration(left)}"

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.artifact_id is not None and self.percent < 100:
            self._show(100.0, f"{self.stage}: done")

    # ----------------------------------------------------------------------------- helpers

    def _advance(self, step: int, total: int, unit: str = "steps") -> None:
        now = time.monotonic()
        if self._first is None:
            self._first = (step, now)
        self._step = step
        if not self._bar_wanted:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                initial=step,
                desc=self.stage,
                unit="step",
                file=self._bar_file,
                # the terminal's width as it changes; a terminal that reports none gets 100
                dynamic_ncols=_terminal_columns(self._bar_file) > 0,
                ncols=None if _terminal_columns(self._bar_file) > 0 else 100,
                smoothing=0.1,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                + unit
                + " [{elapsed} elapsed, {remaining} left]",
            )
            return
        if total != self.bar.total:
            self.bar.total = total
        if step > self.bar.n:
            self.bar.update(step - self.bar.n)

    def _log(self, line: str) -> None:
        if self.bar is None:
            self.log(line)
            return
        self.bar.clear()
        try:
            self.log(line)
        finally:
            self.bar.refresh()

    def _update_artifact(
        self, step: int, total: int, force: bool, detail: str = "", unit: str = "steps"
    ) -> None:
        percent = min(100.0, 100.0 * step / max(total, 1))
        if percent <= self.percent:
            return
        now = time.monotonic()
        if not force and now - self._artifact_time < self.ARTIFACT_EVERY_SECONDS:
            return
        self.percent = percent
        self._artifact_time = now
        eta = self.eta_text(step, total)
        what = "step" if unit == "steps" else unit.removesuffix("s")
        description = f"{self.stage}: {what} {step:,} of {total:,}{detail}".strip()
        if eta:
            description += f" | {eta}"
        self._show(percent, description)

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
            self._log(f"(progress artifact not updated: {exc})")


TrainingProgress = StageProgress  # the earlier name


def _terminal_columns(stream: Any) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# ------------------------------------------------------------------------------ UI links


# Where `mlflow ui --backend-store-uri sqlite:///...` serves a local store unless told otherwise
# (LLMPIPE_MLFLOW_UI_URL names another address).
LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"
# MLflow 3's UI opens every page in its GenAI view (traces, "evaluations") unless the address
# asks for the model-training one: it ignores the experiment's kind there, so every link says it.
MODEL_TRAINING_VIEW = "?workflowType=machine_learning"


def is_local_store(tracking_uri: str) -> bool:
    return not tracking_uri.startswith(("http://", "https://"))


def _mlflow_base(tracking_uri: str) -> str:
    """The MLflow UI's address: the tracking server's own, or where `mlflow ui` serves a local
    store (LOCAL_MLFLOW_UI, or $LLMPIPE_MLFLOW_UI_URL)."""
    if not is_local_store(tracking_uri):
        return redact(tracking_uri).replace("***:***@", "").rstrip("/")
    return os.environ.get("LLMPIPE_MLFLOW_UI_URL", LOCAL_MLFLOW_UI).rstrip("/")


def _shown_uri(tracking_uri: str) -> str:
    """A tracking URI to show: a server's address without its credentials (not even masked)."""
    return redact(tracking_uri) if is_local_store(tracking_uri) else _mlflow_base(tracking_uri)


def mlflow_experiment_url(tracking_uri: str, experiment_id: str) -> str:
    return f"{_mlflow_base(tracking_uri)}/#/experiments/{experiment_id}{MODEL_TRAINING_VIEW}"


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    base = _mlflow_base(tracking_uri)
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}{MODEL_TRAINING_VIEW}"


def mlflow_model_url(tracking_uri: str, name: str, version: str | int | None = None) -> str:
    path = f"/#/models/{name}" + (f"/versions/{version}" if version else "")
    return f"{_mlflow_base(tracking_uri)}{path}{MODEL_TRAINING_VIEW}"


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
    verdict = promotion_text(registered)
    text = f"{registered['metric']} = {registered['value']:.4f}: {verdict}. Eval metrics: {shown}."
    tracker.client.update_model_version(name, number, description=text[:4000])
    champion = number if registered.get("promoted") else registered.get("previous_champion")
    tracker.client.update_registered_model(
        name,
        description=f"GPT checkpoints registered by the llmpipe pipeline. Use "
        f"`models:/{name}@champion` (now version {champion}); promotion rule: "
        f"{registered['metric']}, the {'lower' if mode == 'min' else 'higher'} wins.",
    )


def prefect_artifact_url(artifact_id: str) -> str:
    """An artifact's page in the Prefect UI (the server in use, or `prefect server start`'s)."""
    api = os.environ.get("PREFECT_API_URL")
    ui = LOCAL_PREFECT_UI
    if api:
        from prefect.settings import PREFECT_UI_URL

        ui = PREFECT_UI_URL.value() or api.rstrip("/").removesuffix("/api")
    return f"{ui.rstrip('/')}/artifacts/artifact/{artifact_id}"


def run_summary_markdown(
    config_name: str,
    experiment: str,
    experiment_id: str,
    tracking_uri: str,
    parent_id: str,
    results: dict[str, dict[str, Any]],
) -> str:
    """The flow run's overview: every stage in pipeline order with its state, time, MLflow run
    and its own Prefect card (the UI lists the cards in no fixed order: read them from here)."""
    lines = [
        f"# {config_name}: where this run is tracked",
        f"MLflow {link('pipeline run ' + parent_id[:8], mlflow_run_url(tracking_uri, experiment_id, parent_id))} "
        f"in experiment {link(experiment, mlflow_experiment_url(tracking_uri, experiment_id))} "
        f"(id {experiment_id}), tracking URI `{_shown_uri(tracking_uri)}`.",
    ]
    if is_local_store(tracking_uri):
        lines.append(
            f"The links open once `mlflow ui --backend-store-uri {redact(tracking_uri)}` serves "
            f"the store (at {_mlflow_base(tracking_uri)})."
        )
    registered = (results.get("register") or {}).get("registered")
    if registered:
        model = link(
            f"{registered['model_name']} v{registered['version']}",
            mlflow_model_url(tracking_uri, registered["model_name"], registered["version"]),
        )
        lines.append(
            f"Model {model}: {registered['metric']} = {registered['value']:.4f}, "
            + (
                "now `@champion`."
                if registered.get("promoted")
                else f"{promotion_text(registered)}."
            )
        )
    lines += ["", "| stage | state | seconds | MLflow run | card |", "|---|---|---|---|---|"]
    for name, result in results.items():
        run_id = result.get("stage_run_id", "")
        url = mlflow_run_url(tracking_uri, experiment_id, run_id) if run_id else None
        state = "cached" if result.get("cached") else "ran"
        card = result.get("prefect_artifact_id")
        lines.append(
            f"| {name} | {state} | {float(result.get('seconds') or 0):.1f} | "
            f"{link(run_id[:8], url)} | "
            f"{link('llmpipe-' + name, prefect_artifact_url(str(card))) if card else ''} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- the run's summary

LOCAL_PREFECT_UI = "http://127.0.0.1:4200"  # where `prefect server start` serves its UI


def script_command(name: str) -> str:
    """How to call one of this environment's commands (llmpipe, mlflow, prefect) so that it
    works as printed: its bare name when that is what the shell finds, else its full path in
    the running interpreter's scripts folder (a venv that was never activated)."""
    import shlex
    import shutil

    candidate = Path(sys.executable).parent / name
    if not candidate.exists():
        return name
    found = shutil.which(name)
    try:
        if found and os.path.samefile(found, candidate):
            return name
    except OSError:
        pass
    return shlex.quote(str(candidate))


def promotion_text(registered: dict[str, Any]) -> str:
    """`promoted to @champion` or why not: the rule and both values (registry.decide)."""
    if registered.get("promoted"):
        return "promoted to @champion"
    reason = registered.get("reason") or (
        f"champion v{registered.get('previous_champion')} has "
        f"{registered.get('previous_champion_metric')}"
    )
    return f"not promoted, kept as @challenger: {reason}"


def look_around_commands(summary: dict[str, Any]) -> list[str]:
    """The commands (and addresses) that open what the run made; each runs as printed."""
    import shlex

    uri = summary["tracking_uri"]
    lines = []
    registered = (summary["stages"].get("register") or {}).get("registered")
    if registered:
        generation = summary.get("generation") or {}
        options = "".join(
            f" --{flag} {generation[key]:g}"
            for key, flag in (
                ("temperature", "temperature"),
                ("top_k", "top-k"),
                ("repetition_penalty", "repetition-penalty"),
            )
            if generation.get(key) is not None
        )
        model = shlex.quote(f"models:/{registered['model_name']}@champion")
        lines.append(
            f"  {script_command('llmpipe')} generate {model} 'The history of' "
            # a URL work dir: its MLflow database (if SQLite) is in this machine's cache
            f"--workdir {shlex.quote(summary.get('local_workdir', summary['workdir']))}{options}"
        )
    run_url = mlflow_run_url(uri, summary["experiment_id"], summary["mlflow_run_id"])
    if is_local_store(uri):
        lines.append(f"  {script_command('mlflow')} ui --backend-store-uri {shlex.quote(uri)}")
        lines.append(f"    then {run_url}")
    else:
        lines.append(f"  MLflow:  {run_url}")
    prefect_url = prefect_flow_run_url(summary["prefect_flow_run_id"])
    if prefect_url:
        lines.append(f"  Prefect: {prefect_url}")
    else:
        # analytics off: offline, the server would log "Failed to send telemetry" every 10 min
        lines.append(
            f"  PREFECT_SERVER_ANALYTICS_ENABLED=false {script_command('prefect')} server start"
        )
        lines.append(f"    then {LOCAL_PREFECT_UI}/runs/flow-run/{summary['prefect_flow_run_id']}")
    return lines


def print_summary(summary: dict[str, Any], out: Callable[[str], None] = print) -> None:
    """What `llmpipe run` prints at the end: where everything is, and how to look at it."""
    from pipeline.tracking.registry import list_versions

    stages = summary["stages"]
    states = ", ".join(f"{n} {'cached' if r['cached'] else 'ran'}" for n, r in stages.items())
    uri = summary["tracking_uri"]
    out("")
    out(f"Pipeline finished in {format_duration(summary['seconds'])} ({states})")
    cache = summary.get("local_workdir", summary["workdir"])
    where = summary["workdir"] + (f" (cache here: {cache})" if cache != summary["workdir"] else "")
    out(f"  work dir:     {where}")
    out(
        f"  MLflow run:   {summary['mlflow_run_id']} (experiment {summary['experiment_id']}, "
        f"{redact(uri)})"
    )
    out(f"  Prefect run:  {summary['prefect_flow_run_id']}")
    registered = (stages.get("register") or {}).get("registered")
    if registered:
        rows = list_versions(uri, registered["model_name"])
        aliases = next(
            (r["aliases"] for r in rows if str(r["version"]) == str(registered["version"])), ""
        )
        out(
            f"  registered:   {registered['model_name']} version {registered['version']} "
            f"(aliases: {aliases or 'none'}; {registered['metric']} = {registered['value']:.4f})"
        )
        if not registered.get("promoted"):
            out(f"    {promotion_text(registered)}")
    evaluation = stages.get("evaluate")
    if evaluation:
        metrics = evaluation.get("metrics", {})
        out(
            "  evaluation:   "
            + ", ".join(
                f"{k} {metrics[k]:.4f}" for k in ("val_loss", "val_ppl", "val_bpb") if k in metrics
            )
        )
        for row in evaluation.get("eval_table", []):
            if row["task"] in ("model", "val", "generations") or row["metric"] in (
                "tokens",
                "bytes",
            ):
                continue
            value = f"{row['value']:.4g}" if row["value"] is not None else row["note"]
            stderr = f" ± {row['stderr']:.3f}" if row["stderr"] is not None else ""
            out(f"    {row['task']} {row['metric']}: {value}{stderr}")
        out("  samples:")
        for row in evaluation.get("generations", [])[:3]:
            out(f"    - {row['text'][:160]!r}")
    out("\nLook around (these commands work as printed, from any folder):")
    for line in look_around_commands(summary):
        out(line)
