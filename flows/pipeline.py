"""The pipeline as one Prefect flow: a task per stage, an MLflow run tree beside it.

In: a config file (plus `--set` overrides), a work dir, and optionally `only`/`start` to run
part of the DAG. Out: complete stage folders under the work dir, one MLflow parent run with a
nested run per stage, a Prefect markdown artifact per stage, and a summary dict.

Caching: each task's cache key is its stage fingerprint (plus the work dir), and results are
persisted, so a stage whose output is complete shows as Cached in the Prefect UI. When the
output folder is gone, the cache is refreshed and the stage runs again.

Run it with `llmpipe run CONFIG` or `python -m flows.pipeline CONFIG`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.context import TaskRunContext
from prefect.runtime import flow_run, task_run

from flows.assets import add_stage_metadata, materializing
from flows.execution import (
    close_task_runner,
    dashboard_link,
    open_task_runner,
    run_on,
    stage_executor,
)
from flows.lineage import publish_lineage, record_registration, record_stage
from flows.ui import (
    StageProgress,
    describe_model_version,
    flow_run_name,
    link,
    log_run_plots,
    mlflow_run_url,
    prefect_flow_run_url,
    run_summary_markdown,
)
from pipeline import incremental
from pipeline.config import PipelineConfig, load_config
from pipeline.dag import PlannedStage, check_selection, plan, run_stage, select, stage_names
from pipeline.ingest.files import require_source_files
from pipeline.outputs import StageResult
from pipeline.reports import stage_markdown, stage_metrics
from pipeline.store import Workdir, check_workdir, is_url, open_workdir
from pipeline.tracking.runs import Tracker, redact, resolve_tracking_uri
from pipeline.train.ticks import PROGRESS_TICKS_ENV

SMALL_ARTIFACT_BYTES = 5 * 1024 * 1024
# MLflow prints each run's URL (credentials of the tracking URI included) to stdout, which a
# worker keeps in its log; the flow's own artifacts and summary carry clean links instead.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
TEXT_SUFFIXES = (".json", ".jsonl", ".md", ".txt", ".csv", ".yaml", ".yml")


def _stage_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    where = parameters["workdir"]  # a URL (object storage) or a local folder
    where = where if is_url(where) else str(Path(where).resolve())
    workdir = hashlib.sha256(where.encode()).hexdigest()[:12]
    return f"llmpipe-{parameters['stage']}-{parameters['fingerprint']}-{workdir}"


STAGE_TASK_OPTIONS: dict[str, Any] = {
    "cache_key_fn": _stage_cache_key,
    "persist_result": True,
    "result_serializer": "json",
    "task_run_name": "{stage}",
}


@task(**STAGE_TASK_OPTIONS)
def stage_task(
    stage: str,
    fingerprint: str,
    workdir: str,
    config: dict[str, Any],
    tracking_uri: str,
    mlflow_run_id: str,
) -> dict[str, Any]:
    """Run one stage from its config; the returned result (as a dict) is what Prefect caches."""
    logger = get_run_logger()
    parsed = PipelineConfig.model_validate(config)
    work = open_workdir(workdir)  # on a Dask worker too: its machine's cache of the store
    planned = {p.name: p for p in plan(parsed, work.local, tracking_uri)}[stage]
    if planned.output.fingerprint != fingerprint:
        raise RuntimeError(f"{stage}: fingerprint changed between planning and running")
    Tracker(tracking_uri, parsed.tracking.experiment).set_tags(
        mlflow_run_id, {"prefect.task_run_id": str(task_run.id)}
    )
    # `step N/M` lines and `@progress` ticks -> a terminal bar with the time left, ETAs in the
    # log, a Prefect progress artifact. The trainer process inherits the request for ticks.
    os.environ[PROGRESS_TICKS_ENV] = "1"
    progress = StageProgress(stage, logger.info)
    try:
        with stage_executor(parsed.execution) as executor:  # local processes or Dask workers
            result = run_stage(
                planned,
                parsed,
                tracking_uri,
                mlflow_run_id,
                log=progress,
                executor=executor,
                store=work.store,
            )
    finally:
        progress.finish()
    add_stage_metadata(planned, parsed, result, tracking_uri, {"mlflow_run_id": mlflow_run_id})
    # the MLflow run that made the output (a reused output was made by an earlier run)
    return {**result.to_dict(), "reused": result.reused, "mlflow_run_id": mlflow_run_id}


def _log_stage_files(tracker: Tracker, run_id: str, folder: Path) -> None:
    """Log the small files of a stage output (manifest, quarantine, curves, tables).

    Text files go through `redact`: a request file may hold a tracking URI with credentials.
    """
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix not in (".parquet", ".bin"):
            if path.stat().st_size <= SMALL_ARTIFACT_BYTES:
                if path.suffix in TEXT_SUFFIXES:
                    text = path.read_text(encoding="utf-8", errors="replace")
                    if redact(text) != text:
                        tracker.log_text(run_id, redact(text), f"output/{path.name}")
                        continue
                tracker.log_artifact(run_id, path, "output")


def _log_stage_tables(
    tracker: Tracker, run_id: str, planned: PlannedStage, result: StageResult
) -> None:
    """Refusals by reason and the stage's row tables (generations, rules, the eval table...) as
    MLflow tables, viewable in the run's artifacts."""
    for key in ("quarantined_by_reason", "rejected_by_rule"):
        if result.counts.get(key):
            rows = [{"reason": k, "documents": v} for k, v in result.counts[key].items()]
            tracker.log_table(run_id, rows, f"{key}.json")
    for name, rows in planned.stage.tables(result).items():
        tracker.log_table(run_id, rows, f"{name}.json")


def end_status(exc: BaseException) -> str:
    """The MLflow status of a run that ended with `exc`: an error is FAILED; anything else
    (Ctrl-C, SIGTERM, a Prefect cancellation) stopped it from outside: KILLED."""
    return "FAILED" if isinstance(exc, Exception) else "KILLED"


def _run_planned(
    planned: PlannedStage,
    config: PipelineConfig,
    tracker: Tracker,
    parent_id: str,
    work: Workdir,
    task_runner: Any | None = None,
) -> dict[str, Any]:
    run_id = tracker.start_run(
        planned.name,
        parent_id=parent_id,
        tags={
            "llmpipe.stage": planned.name,
            "llmpipe.fingerprint": planned.output.fingerprint,
            "prefect.flow_run_id": str(flow_run.id),
        },
    )
    try:
        return _run_stage_run(planned, config, tracker, parent_id, run_id, work, task_runner)
    except BaseException as exc:  # the stage's run says how it ended, whatever ended it
        tracker.end_run(run_id, end_status(exc))
        raise


def _run_stage_run(
    planned: PlannedStage,
    config: PipelineConfig,
    tracker: Tracker,
    parent_id: str,
    run_id: str,
    work: Workdir,
    task_runner: Any | None,
) -> dict[str, Any]:
    tracker.log_params(run_id, planned.config)
    complete = work.complete(planned.output)  # here, or on the work dir's object store
    url = mlflow_run_url(tracker.tracking_uri, tracker.experiment_id, run_id)
    task = materializing(stage_task, STAGE_TASK_OPTIONS, planned, config, tracker.tracking_uri, url)
    task = task.with_options(  # the stage's outputs are its Prefect assets (flows/assets.py)
        refresh_cache=not complete, retries=planned.stage.retries, retry_delay_seconds=5
    )
    parameters = dict(
        stage=planned.name,
        fingerprint=planned.output.fingerprint,
        workdir=work.url,
        config=config.model_dump(mode="json"),
        tracking_uri=tracker.tracking_uri,
        mlflow_run_id=run_id,
    )
    state = run_on(task_runner, planned.stage, task, parameters)  # data stages: Dask, if set
    returned = state.result()  # raises the stage's error when it failed
    result = StageResult.from_dict(returned)
    if work.store is not None:  # made on another machine, or cached: its files, to log them
        work.store.pull(planned.output)
    cached = state.name == "Cached" or bool(returned.get("reused"))
    result.reused = cached
    made_by = returned.get("mlflow_run_id", "")
    tags = {"llmpipe.cached": str(cached).lower(), "llmpipe.output": str(planned.output.path)}
    if cached and made_by != run_id:
        tags["llmpipe.original_run_id"] = made_by
    tracker.set_tags(run_id, tags)
    tracker.log_metrics(run_id, stage_metrics(result))
    _log_stage_files(tracker, run_id, planned.output.path)
    _log_stage_tables(tracker, run_id, planned, result)
    markdown = stage_markdown(planned.stage, result)
    uri, experiment_id = tracker.tracking_uri, tracker.experiment_id
    markdown += (
        f"\n\nMLflow: {link('stage run ' + run_id[:8], mlflow_run_url(uri, experiment_id, run_id))}"
        f" (pipeline run {link(parent_id[:8], mlflow_run_url(uri, experiment_id, parent_id))})."
    )
    tracker.log_text(run_id, markdown, "summary.md")
    card = create_markdown_artifact(
        markdown=markdown, key=f"llmpipe-{planned.name}", description=planned.name
    )
    if result.tables.get("eval_table"):
        create_table_artifact(
            table=result.tables["eval_table"], key="llmpipe-eval-table", description="evaluation"
        )
    tracker.end_run(run_id)
    # the run's summary of this stage (pipeline_flow's return value): the result, and where
    return {
        **result.to_dict(),
        "mlflow_run_id": made_by,
        "cached": cached,
        "stage_run_id": run_id,
        "output": str(planned.output.path),
        "prefect_artifact_id": str(card) if card else None,
    }


def _run_stages(
    config: PipelineConfig,
    stages: list[PlannedStage],
    tracker: Tracker,
    parent_id: str,
    work: Workdir,
    started: float,
) -> dict[str, Any]:
    """Run the stages under the parent MLflow run, then record the run's summary and end it
    (the caller ends it FAILED or KILLED when this raises)."""
    logger = get_run_logger()
    tracking_uri = tracker.tracking_uri
    tracker.log_params(parent_id, config.model_dump(mode="json", exclude={"tracking"}))
    tracker.log_dict(parent_id, config.model_dump(mode="json", exclude={"tracking"}), "config.json")
    results: dict[str, Any] = {}  # each stage's summary (the flow's return value)
    made: dict[str, tuple[Path, StageResult]] = {}  # each stage's output folder and result
    lineages = []  # what each stage read and wrote: MLflow datasets, Prefect assets
    task_runner = open_task_runner(config.execution)  # a DaskTaskRunner, or None
    dashboard = dashboard_link(task_runner)
    if dashboard:  # where to watch the data stages' units run (Dask's task stream, workers)
        create_link_artifact(
            link=dashboard,
            link_text="Dask dashboard",
            key="llmpipe-dask-dashboard",
            description="the Dask cluster the data stages ran on",
        )
        logger.info("Dask dashboard: %s", dashboard)
    try:
        for planned in stages:
            results[planned.name] = _run_planned(
                planned, config, tracker, parent_id, work, task_runner
            )
            result = StageResult.from_dict(results[planned.name])
            made[planned.name] = (planned.output.path, result)
            run_id = results[planned.name]["stage_run_id"]
            lineages.append(record_stage(tracker, planned, config, result, run_id))
            logger.info(
                "%s: %s (%s)",
                planned.name,
                "cached" if results[planned.name]["cached"] else "done",
                planned.output.path,
            )
            if planned.stage.nothing_new(config, result):
                logger.info("%s: no new documents since the last increment; done", planned.name)
                break
    finally:
        close_task_runner(task_runner)
    incremental.record(config, work.local, made)
    rows = [
        {
            "stage": name,
            "cached": r["cached"],
            "seconds": r.get("seconds", 0.0),
            "fingerprint": r["fingerprint"],
        }
        for name, r in results.items()
    ]
    create_table_artifact(table=rows, key="llmpipe-stages", description="stages of this run")
    create_markdown_artifact(
        key="llmpipe-mlflow",
        markdown=run_summary_markdown(
            config.name,
            config.tracking.experiment,
            tracker.experiment_id,
            tracking_uri,
            parent_id,
            results,
        ),
        description="where this run is tracked",
    )
    registered = (results.get("register") or {}).get("registered")
    if registered and not results["register"]["cached"]:
        describe_model_version(tracker, registered, config.register.mode)
        record_registration(tracker, parent_id, results, [x for x in lineages if x])
    publish_lineage([x for x in lineages if x])
    with tempfile.TemporaryDirectory() as scratch:
        log_run_plots(tracker, parent_id, results, Path(scratch))
    for name in ("evaluate", "register"):  # the model's metrics, on the run a person opens
        if name in made:
            metrics = stage_metrics(made[name][1])
            metrics.pop("stage_seconds", None)  # each stage's time is on its own run
            tracker.log_metrics(parent_id, metrics)
    # the whole run's wall time, from the flow's start to here
    tracker.log_metrics(parent_id, {"pipeline_seconds": round(time.time() - started, 2)})
    tracker.end_run(parent_id)
    return results


@flow(name="llmpipe", log_prints=True, flow_run_name=flow_run_name)
def pipeline_flow(
    config_path: str,
    workdir: str | None = None,
    overrides: list[str] | None = None,
    only: list[str] | None = None,
    start: str | None = None,
    sweep_run_id: str | None = None,
) -> dict[str, Any]:
    """Run the DAG (or the selected part of it) and return a summary of what it did; in a
    sweep (flows/sweep.py) its MLflow run is nested under the sweep's `sweep_run_id`."""
    logger = get_run_logger()
    started = time.time()
    config = load_config(config_path, overrides or [])
    # What `llmpipe run` checks before it starts anything, for runs started elsewhere (a
    # deployment's run on a worker): fail before the work dir and MLflow are touched.
    check_selection(stage_names(config), only, start)
    require_source_files(config)
    check_workdir(workdir or config.workdir, config.run.mode == "incremental")
    # A URL (s3://...) keeps the outputs on object storage; stages compute in a local cache.
    work = open_workdir(workdir or config.workdir)
    local = work.local
    local.mkdir(parents=True, exist_ok=True)
    tracking_uri = resolve_tracking_uri(config.tracking.mlflow_tracking_uri, local)
    tracker = Tracker(tracking_uri, config.tracking.experiment, artifact_root=work.mlflow_artifacts)
    # An incremental run builds on the earlier ones: what they saw, their tokenizer, @champion.
    config = incremental.resolve(config, local, tracking_uri)
    stages = select(plan(config, local, tracking_uri), only, start)
    prefect_url = prefect_flow_run_url(str(flow_run.id))
    parent_id = tracker.start_run(
        str(flow_run.name),  # config name, mode and date (flows.ui.flow_run_name)
        parent_id=sweep_run_id,
        tags={
            "prefect.flow_run_id": str(flow_run.id),
            "prefect.flow_run_name": str(flow_run.name),
            "llmpipe.config": str(Path(config_path).resolve()),
            "llmpipe.workdir": work.url,
            **({"prefect.flow_run_url": prefect_url} if prefect_url else {}),
            # The run page's description (markdown): where to follow it in Prefect.
            "mlflow.note.content": f"Pipeline `{config.name}`, Prefect flow run "
            f"{link(str(flow_run.name), prefect_url)}.",
        },
    )
    logger.info("MLflow run %s in %s", parent_id, redact(tracking_uri))
    try:
        results = _run_stages(config, stages, tracker, parent_id, work, started)
    except BaseException as exc:  # failed, or stopped by a signal: the run says which
        tracker.end_run(parent_id, end_status(exc))
        raise
    summary = {
        "config": str(config_path),
        "workdir": work.url,
        "local_workdir": str(local),
        "tracking_uri": tracking_uri,
        "experiment_id": tracker.experiment_id,
        "mlflow_run_id": parent_id,
        "prefect_flow_run_id": str(flow_run.id),
        "seconds": round(time.time() - started, 2),
        "stages": results,
        # how `llmpipe generate` samples like the evaluate stage (printed by the summary)
        "generation": {
            "temperature": config.evaluate.temperature,
            "top_k": config.evaluate.top_k,
            "repetition_penalty": config.evaluate.repetition_penalty,
        },
    }
    return summary


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.pipeline CONFIG [...]`: the same as `llmpipe run`."""
    from flows.cli import main as cli_main

    return cli_main(["run", *(argv if argv is not None else __import__("sys").argv[1:])])


if __name__ == "__main__":
    raise SystemExit(main())
