"""`llmpipe sweep`: compare data recipes (or training settings) on small proxy models.

In: a config file, the variants (`pipeline.sweep.expand`: a grid, named variants, seeds), a work
dir shared by all of them, and the metric to rank by (bits per byte on a fixed reference text by
default). Out: one Prefect flow run `llmpipe-sweep` whose subflows are the variants' pipeline
runs (`flows.pipeline.pipeline_flow`, one per variant and seed, register left out), an MLflow
parent run with each variant's pipeline run nested under it, and on both the comparison table
(variant, overrides, documents kept per stage, tokens, the metrics as mean ± std over seeds)
and a plot of the metric per variant (`pipeline.sweep_table`).

Shared stages run once: the variants use one work dir, and a stage's output folder is named by
the fingerprint of the config fields and inputs it depends on, so a variant whose ingest, clean
or dedup settings equal an earlier variant's finds those outputs complete (Cached in Prefect).
The summary counts each stage's executions to show it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from flows.pipeline import end_status, pipeline_flow
from flows.ui import link, mlflow_run_url, prefect_flow_run_url
from pipeline.dag import stage_names
from pipeline.ingest.files import require_source_files
from pipeline.store import check_workdir, open_workdir
from pipeline.sweep import Variant, check_same_budget, check_variants, reference_metric
from pipeline.sweep_table import (
    compare,
    comparison_markdown,
    run_row,
    stage_executions,
    sweep_plot,
    text_chart,
)
from pipeline.tracking.runs import Tracker, redact, resolve_tracking_uri

# A sweep compares proxy models; none of them is a candidate for @champion.
LEFT_OUT = ("register",)
LOWER_IS_BETTER = ("bpb", "ppl", "loss", "perplexity")


def metric_mode(metric: str) -> str:
    """min for losses, perplexities and bits per byte; max for accuracies and scores."""
    return "min" if metric.rsplit("_", 1)[-1] in LOWER_IS_BETTER else "max"


def _sweep_run_name() -> str:
    params = flow_run.parameters or {}
    name = Path(str(params.get("config_path", "sweep"))).stem
    return f"{name} · sweep · {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"


@flow(name="llmpipe-sweep", log_prints=True, flow_run_name=_sweep_run_name)
def sweep_flow(
    config_path: str,
    variants: list[dict[str, Any]],
    workdir: str | None = None,
    base_overrides: list[str] | None = None,
    metric: str | None = None,
    mode: str | None = None,
) -> dict[str, Any]:
    """Run every variant through the DAG (shared stages once) and compare them."""
    logger = get_run_logger()
    started = time.time()
    base = tuple(base_overrides or [])
    runs = [
        Variant(v["name"], tuple(v["overrides"]), v.get("seed"), base, tuple(v.get("grid", ())))
        for v in variants
    ]
    # `llmpipe sweep` checked them already; again for a sweep started another way
    configs = check_variants(config_path, runs)
    budget = check_same_budget(runs, configs)
    for config in configs:
        require_source_files(config)
    metric = reference_metric(configs[0], metric)
    mode = mode or metric_mode(metric)
    first = configs[0]
    check_workdir(workdir or first.workdir, first.run.mode == "incremental")
    work = open_workdir(workdir or first.workdir)  # a local folder, or a URL and its cache
    work.local.mkdir(parents=True, exist_ok=True)
    tracking_uri = resolve_tracking_uri(first.tracking.mlflow_tracking_uri, work.local)
    tracker = Tracker(tracking_uri, first.tracking.experiment, artifact_root=work.mlflow_artifacts)
    prefect_url = prefect_flow_run_url(str(flow_run.id))
    sweep_id = tracker.start_run(
        str(flow_run.name),
        tags={
            "llmpipe.sweep": "true",
            "prefect.flow_run_id": str(flow_run.id),
            **({"prefect.flow_run_url": prefect_url} if prefect_url else {}),
            "mlflow.note.content": f"Sweep of `{first.name}`: {len(runs)} pipeline runs, "
            f"ranked by `{metric}`; Prefect flow run {link(str(flow_run.name), prefect_url)}.",
        },
    )
    logger.info("Sweep: %d pipeline runs, MLflow run %s in %s", len(runs), sweep_id,
                redact(tracking_uri))  # fmt: skip
    try:
        tracker.log_params(
            sweep_id,
            {"metric": metric, "mode": mode, "token_budget": budget, "runs": len(runs),
             "variants": len({r.name for r in runs}), "base_overrides": " ".join(base)},
        )  # fmt: skip
        tracker.log_dict(sweep_id, [r.to_dict() for r in runs], "variants.json")
        summaries: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        for variant, config in zip(runs, configs, strict=True):
            logger.info("Variant %s: %s", variant.run_name, " ".join(variant.overrides) or "-")
            only = [s for s in stage_names(config) if s not in LEFT_OUT]
            summary = pipeline_flow.with_options(
                flow_run_name=f"{config.name} · {variant.run_name}"
            )(
                config_path=config_path,
                workdir=work.url,
                overrides=variant.all_overrides,
                only=only,
                sweep_run_id=sweep_id,
            )
            tracker.set_tags(
                summary["mlflow_run_id"],
                {"llmpipe.sweep_run_id": sweep_id, "llmpipe.sweep_variant": variant.name,
                 "llmpipe.sweep_overrides": " ".join(variant.overrides),
                 "llmpipe.sweep_seed": str(variant.seed)},
            )  # fmt: skip
            summaries.append(summary)
            rows.append(run_row(variant, summary))
        result = _report(tracker, sweep_id, rows, summaries, metric, mode)
        result["outputs"] = [{k: v["output"] for k, v in s["stages"].items()} for s in summaries]
    except BaseException as exc:
        tracker.end_run(sweep_id, end_status(exc))
        raise
    tracker.log_metrics(sweep_id, {"sweep_seconds": round(time.time() - started, 2)})
    tracker.end_run(sweep_id)
    return {
        **result,
        "config": config_path,
        "workdir": work.url,
        "tracking_uri": tracking_uri,
        "experiment_id": tracker.experiment_id,
        "mlflow_run_id": sweep_id,
        "prefect_flow_run_id": str(flow_run.id),
        "token_budget": budget,
        "runs": rows,
        "seconds": round(time.time() - started, 2),
    }


def _report(
    tracker: Tracker,
    sweep_id: str,
    rows: list[dict[str, Any]],
    summaries: list[dict[str, Any]],
    metric: str,
    mode: str,
) -> dict[str, Any]:
    """The comparison on the sweep's MLflow run and as Prefect artifacts."""
    table = compare(rows, metric, mode)
    executions = stage_executions(summaries)
    markdown = comparison_markdown(table, metric, executions, len(summaries))
    url = mlflow_run_url(tracker.tracking_uri, tracker.experiment_id, sweep_id)
    tracker.log_table(sweep_id, table, "sweep_table.json")
    tracker.log_table(sweep_id, rows, "sweep_runs.json")
    tracker.log_dict(sweep_id, executions, "stage_executions.json")
    tracker.log_text(sweep_id, markdown, "sweep.md")
    with tempfile.TemporaryDirectory() as scratch:
        plot = sweep_plot(table, metric, Path(scratch) / "sweep_metric.png")
        tracker.log_artifact(sweep_id, plot, "plots")
    best = table[0]
    tracker.log_metrics(
        sweep_id, {f"best_{metric}": best[metric], f"best_{metric}_std": best[f"{metric}_std"]}
    )
    tracker.set_tags(sweep_id, {"llmpipe.sweep_best": best["variant"]})
    create_table_artifact(
        table=table, key="llmpipe-sweep", description="sweep: one row per variant"
    )
    card = (
        markdown
        + "\n\n"
        + text_chart(table, metric)
        + f"\n\nMLflow: {link('sweep run ' + sweep_id[:8], url)} (table `sweep_table.json`, "
        "plot `plots/sweep_metric.png`; each variant's pipeline run is nested under it)."
    )
    create_markdown_artifact(markdown=card, key="llmpipe-sweep-summary", description="sweep")
    return {"table": table, "stage_executions": executions, "markdown": markdown,
            "metric": metric, "mode": mode, "best": best["variant"]}  # fmt: skip
