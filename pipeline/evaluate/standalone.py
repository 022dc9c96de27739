"""Evaluating a model outside the pipeline: any checkpoint folder or registry URI.

In: what the user names (`work/pretrain/<fp>/final`, `models:/NAME@champion`,
`models:/NAME/3`, `runs:/...`), the `evaluate` config, the task names to run, and optionally
the val token shards. Out: the suite's result (see `pipeline.evaluate.suite`), and with
`record=True` an MLflow run named `eval` holding the metrics and the table, plus, for a
registered version, its metrics written into the version's tags (so `llmpipe models list
--metrics` compares it).

The held-out task needs the val shards the model was trained beside: they are found from a
pipeline checkpoint folder (its pretrain manifest names the shards), from a registered
version's `llmpipe.shards_output` tag, or given explicitly; otherwise the task is skipped.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from pipeline.config import EvaluateConfig
from pipeline.evaluate.suite import run_evaluation
from pipeline.generate import resolve_model_dir
from pipeline.model_uris import registered_version
from pipeline.outputs import is_complete, read_result


def find_shards(model: str, model_dir: Path, version: Any | None) -> Path | None:
    """The val shards folder a model was trained beside, when that can be known."""
    candidates = []
    if version is not None and version.tags.get("llmpipe.shards_output"):
        candidates.append(Path(version.tags["llmpipe.shards_output"]))
    # <workdir>/pretrain/<fp>/final: the pretrain result names the shards it read.
    for folder in (Path(model), model_dir):
        if folder.name == "final" and is_complete(folder.parent):
            shards = read_result(folder.parent).inputs.get("shards")
            if shards:
                candidates.append(folder.parent.parent.parent / "shards" / shards)
    return next((c for c in candidates if is_complete(c)), None)


def evaluate_named_model(
    model: str,
    cfg: EvaluateConfig,
    base_dir: str,
    tracking_uri: str | None = None,
    tasks: list[str] | None = None,
    shards_dir: Path | None = None,
    out_dir: Path | None = None,
    record: bool = False,
    experiment: str = "llmpipe",
) -> dict[str, Any]:
    version = registered_version(model, tracking_uri)
    model_dir = resolve_model_dir(model, tracking_uri)
    shards_dir = shards_dir or find_shards(model, model_dir, version)
    bytes_per_token = None
    if shards_dir is not None:
        bytes_per_token = float(read_result(Path(shards_dir)).stats["bytes_per_token_val"])
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="llmpipe-eval-"))
    result = run_evaluation(
        model_dir, cfg, base_dir, out, shards_dir, bytes_per_token, tasks, log=lambda _: None
    )
    result["out_dir"] = str(out)
    result["model_dir"] = str(model_dir)
    if record:
        result["recorded"] = record_evaluation(
            result, model, version, tracking_uri, experiment, out
        )
    return result


def record_evaluation(
    result: dict[str, Any],
    model: str,
    version: Any | None,
    tracking_uri: str | None,
    experiment: str,
    out_dir: Path,
) -> dict[str, Any]:
    """An MLflow run with the metrics and table; metric tags on the registered version."""
    from mlflow import MlflowClient

    from pipeline.tracking.runs import Tracker, default_tracking_uri

    uri = tracking_uri or default_tracking_uri(Path("work"))
    tracker = Tracker(uri, experiment)
    run_id = tracker.start_run("eval", tags={"llmpipe.stage": "eval", "llmpipe.model": model})
    tracker.log_params(
        run_id, {"model": model, "tasks": sorted({r["task"] for r in result["table"]})}
    )
    tracker.log_metrics(run_id, result["metrics"])
    tracker.log_table(run_id, result["table"], "eval_table.json")
    if result["generations"]:
        tracker.log_table(run_id, result["generations"], "generations.json")
    tracker.log_artifact(run_id, out_dir / "eval_table.csv")
    tracked = {"run_id": run_id, "tracking_uri": uri}
    if version is not None:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        for key, value in result["metrics"].items():
            client.set_model_version_tag(version.name, version.version, key, str(value))
        client.set_model_version_tag(version.name, version.version, "llmpipe.last_eval_run", run_id)
        tracked["version"] = f"{version.name}/{version.version}"
    tracker.end_run(run_id)
    return tracked
