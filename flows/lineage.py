"""The pipeline flow's lineage records, in MLflow and in Prefect.

In: each finished stage (its plan, the flow's result for it, the config), then the registered
version. Out:

- `record_stage()`: the stage's datasets on its MLflow run (every run of the stage, reused or
  not); returns the `StageLineage` for the rest of the run. (The stage's task materializes its
  Prefect assets itself: flows/assets.py.)
- `record_registration()`: the registered version's LoggedModel tied to its training run, eval
  metrics and datasets, and to the pipeline's run (pipeline/tracking/lineage.py).
- `publish_lineage()`: the `llmpipe-lineage` artifact (flows/assets.py).

Lineage is a record beside the results: a failure to write it is logged as a warning and the
run goes on.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.assets import lineage_markdown
from flows.ui import mlflow_model_url, mlflow_run_url
from pipeline.config import PipelineConfig
from pipeline.dag import PlannedStage
from pipeline.outputs import StageResult
from pipeline.tracking.lineage import (
    StageLineage,
    link_registered_model,
    log_stage_datasets,
    stage_lineage,
)
from pipeline.tracking.runs import Tracker


def record_stage(
    tracker: Tracker,
    planned: PlannedStage,
    config: PipelineConfig,
    result: StageResult,
    stage_run_id: str,
) -> StageLineage | None:
    try:
        lineage = stage_lineage(
            planned.name,
            planned.output.path,
            {name: up.path for name, up in planned.upstream.items()},
            config,
            result,
            tracker.tracking_uri,
        )
        log_stage_datasets(tracker.client, stage_run_id, lineage)
        return lineage
    except Exception as exc:  # a record, not a result: warn and go on
        get_run_logger().warning("%s: lineage not recorded: %r", planned.name, exc)
        return None


def record_registration(
    tracker: Tracker,
    parent_id: str,
    results: dict[str, dict[str, Any]],
    lineages: list[StageLineage],
) -> str | None:
    """Link the LoggedModel of the version this run registered; returns its model id."""
    registered = results["register"]["registered"]
    model_stage = "finetune" if "finetune" in results else "pretrain"
    trained = results.get(model_stage, {})
    evaluation = results.get("evaluate", {})
    evaluate_lineage = next((x for x in lineages if x.stage == "evaluate"), None)
    tags = {
        f"llmpipe.{name}_fingerprint": str(result.get("fingerprint", ""))
        for name, result in results.items()
    }
    try:
        return link_registered_model(
            tracker.client,
            registered,
            parent_run_id=parent_id,
            training_run_id=trained.get("mlflow_run_id"),
            evaluate_run_id=evaluation.get("stage_run_id"),
            eval_table=evaluation.get("eval_table", []),
            eval_lineage=evaluate_lineage,
            model_config=trained.get("config", {}),
            tags=tags,
            version_url=mlflow_model_url(
                tracker.tracking_uri, registered["model_name"], registered["version"]
            ),
            run_url=lambda run_id: mlflow_run_url(
                tracker.tracking_uri, tracker.experiment_id, run_id
            ),
            trained_by=model_stage,
        )
    except Exception as exc:
        get_run_logger().warning("register: the logged model's links not recorded: %r", exc)
        return None


def publish_lineage(lineages: list[StageLineage]) -> None:
    if lineages:
        create_markdown_artifact(
            markdown=lineage_markdown(lineages),
            key="llmpipe-lineage",
            description="lineage: source files -> stage outputs -> registered model",
        )
