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
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import TaskRunContext
from prefect.runtime import flow_run, task_run

from pipeline.config import PipelineConfig, load_config
from pipeline.dag import PlannedStage, plan, run_stage, select
from pipeline.parallel import make_executor
from pipeline.reports import stage_markdown, stage_metrics
from pipeline.tracking.runs import Tracker, redact, resolve_tracking_uri

# Training resumes from its last checkpoint and registry writes can meet a locked SQLite
# database: both are worth a retry. Data stages fail for reasons a retry does not change.
RETRIES = {"pretrain": 1, "register": 2}
SMALL_ARTIFACT_BYTES = 5 * 1024 * 1024


def _stage_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    workdir = hashlib.sha256(str(Path(parameters["workdir"]).resolve()).encode()).hexdigest()[:12]
    return f"llmpipe-{parameters['stage']}-{parameters['fingerprint']}-{workdir}"


@task(
    cache_key_fn=_stage_cache_key,
    persist_result=True,
    result_serializer="json",
    task_run_name="{stage}",
)
def stage_task(
    stage: str,
    fingerprint: str,
    workdir: str,
    config: dict[str, Any],
    tracking_uri: str,
    mlflow_run_id: str,
) -> dict[str, Any]:
    """Run one stage from its config; the returned manifest is what Prefect caches."""
    logger = get_run_logger()
    parsed = PipelineConfig.model_validate(config)
    planned = {p.name: p for p in plan(parsed, Path(workdir), tracking_uri)}[stage]
    if planned.output.fingerprint != fingerprint:
        raise RuntimeError(f"{stage}: fingerprint changed between planning and running")
    Tracker(tracking_uri, parsed.tracking.experiment).set_tags(
        mlflow_run_id, {"prefect.task_run_id": str(task_run.id)}
    )
    executor = make_executor(parsed.execution.workers)
    manifest = run_stage(
        planned, parsed, tracking_uri, mlflow_run_id, log=logger.info, executor=executor
    )
    return {**manifest, "mlflow_run_id": manifest.get("mlflow_run_id", mlflow_run_id)}


def _log_stage_files(tracker: Tracker, run_id: str, folder: Path) -> None:
    """Log the small files of a stage output (manifest, quarantine, curves, tables)."""
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix not in (".parquet", ".bin"):
            if path.stat().st_size <= SMALL_ARTIFACT_BYTES:
                tracker.log_artifact(run_id, path, "output")


def _log_stage_tables(tracker: Tracker, run_id: str, manifest: dict[str, Any]) -> None:
    """Rejection reasons and generations as MLflow tables, viewable in the run's artifacts."""
    counts = manifest.get("counts") or {}
    for key in ("quarantined_by_reason", "rejected_by_rule"):
        if counts.get(key):
            rows = [{"reason": k, "documents": v} for k, v in counts[key].items()]
            tracker.log_table(run_id, rows, f"{key}.json")
    if manifest.get("generations"):
        tracker.log_table(run_id, manifest["generations"], "generations.json")


def _run_planned(
    planned: PlannedStage,
    config: PipelineConfig,
    tracker: Tracker,
    parent_id: str,
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
    tracker.log_params(run_id, planned.config)
    complete = planned.output.complete()
    state = stage_task.with_options(
        refresh_cache=not complete, retries=RETRIES.get(planned.name, 0), retry_delay_seconds=5
    )(
        stage=planned.name,
        fingerprint=planned.output.fingerprint,
        workdir=str(planned.output.workdir),
        config=config.model_dump(mode="json"),
        tracking_uri=tracker.tracking_uri,
        mlflow_run_id=run_id,
        return_state=True,
    )
    if not state.is_completed():
        tracker.end_run(run_id, "FAILED")
        state.result()  # raises the stage's error
    manifest = state.result()
    cached = state.name == "Cached" or bool(manifest.get("reused"))
    tags = {"llmpipe.cached": str(cached).lower(), "llmpipe.output": str(planned.output.path)}
    if cached and manifest.get("mlflow_run_id") != run_id:
        tags["llmpipe.original_run_id"] = manifest.get("mlflow_run_id", "")
    tracker.set_tags(run_id, tags)
    tracker.log_metrics(run_id, stage_metrics(manifest))
    _log_stage_files(tracker, run_id, planned.output.path)
    _log_stage_tables(tracker, run_id, manifest)
    markdown = stage_markdown(planned.name, {**manifest, "reused": cached})
    markdown += f"\n\nMLflow run `{run_id}` (parent `{parent_id}`)."
    tracker.log_text(run_id, markdown, "summary.md")
    create_markdown_artifact(
        markdown=markdown, key=f"llmpipe-{planned.name}", description=planned.name
    )
    tracker.end_run(run_id)
    return {
        **manifest,
        "cached": cached,
        "stage_run_id": run_id,
        "output": str(planned.output.path),
    }


@flow(name="llmpipe", log_prints=True)
def pipeline_flow(
    config_path: str,
    workdir: str | None = None,
    overrides: list[str] | None = None,
    only: list[str] | None = None,
    start: str | None = None,
) -> dict[str, Any]:
    """Run the DAG (or the selected part of it) and return a summary of what it did."""
    logger = get_run_logger()
    started = time.time()
    config = load_config(config_path, overrides or [])
    work = Path(workdir or config.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    tracking_uri = resolve_tracking_uri(config.tracking.mlflow_tracking_uri, work)
    tracker = Tracker(tracking_uri, config.tracking.experiment, artifact_root=work / "mlartifacts")
    stages = select(plan(config, work, tracking_uri), only, start)
    parent_id = tracker.start_run(
        f"{config.name}-{flow_run.name}",
        tags={
            "prefect.flow_run_id": str(flow_run.id),
            "prefect.flow_run_name": str(flow_run.name),
            "llmpipe.config": str(Path(config_path).resolve()),
            "llmpipe.workdir": str(work),
        },
    )
    logger.info("MLflow run %s in %s", parent_id, redact(tracking_uri))
    tracker.log_params(parent_id, config.model_dump(mode="json", exclude={"tracking"}))
    tracker.log_dict(parent_id, config.model_dump(mode="json", exclude={"tracking"}), "config.json")
    results: dict[str, Any] = {}
    try:
        for planned in stages:
            results[planned.name] = _run_planned(planned, config, tracker, parent_id)
            logger.info(
                "%s: %s (%s)",
                planned.name,
                "cached" if results[planned.name]["cached"] else "done",
                planned.output.path,
            )
    except BaseException:
        tracker.end_run(parent_id, "FAILED")
        raise
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
        markdown=f"MLflow run `{parent_id}` in experiment `{config.tracking.experiment}` "
        f"(id {tracker.experiment_id}), tracking URI `{redact(tracking_uri)}`.",
        description="where this run is tracked",
    )
    for name in ("evaluate", "register"):
        if name in results:
            tracker.log_metrics(parent_id, stage_metrics(results[name]))
    tracker.end_run(parent_id)
    summary = {
        "config": str(config_path),
        "workdir": str(work),
        "tracking_uri": tracking_uri,
        "experiment_id": tracker.experiment_id,
        "mlflow_run_id": parent_id,
        "prefect_flow_run_id": str(flow_run.id),
        "seconds": round(time.time() - started, 2),
        "stages": results,
    }
    return summary


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.pipeline CONFIG [...]`: the same as `llmpipe run`."""
    from flows.cli import main as cli_main

    return cli_main(["run", *(argv if argv is not None else __import__("sys").argv[1:])])


if __name__ == "__main__":
    raise SystemExit(main())
