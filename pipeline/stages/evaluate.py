"""The evaluate stage: the model in, its scores on held-out data, benchmarks and the
application tasks out (pipeline/evaluate). An incremental run scores the first run's held-out
split (`val_bpb`, `val_bpb_first`) and today's (`val_bpb_new`, and the champion it started from
on it: `start_val_bpb_new`; pipeline/evaluate/increments.py)."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.outputs import StageResult, read_result
from pipeline.stages.base import Reads, Stage, StageContext
from pipeline.stages.choices import decontaminates, model_stage, pretrains


class Evaluate(Stage):
    name = "evaluate"
    version = 2
    sections = ("evaluate",)

    def reads(self, config: PipelineConfig, tracking_uri: str | None) -> Reads:
        from pipeline.evaluate.tasks import eval_input_fingerprints

        stages = (model_stage(config), "shards") if pretrains(config) else ("finetune",)
        if decontaminates(config):  # its report marks each task clean or contaminated
            stages += ("decontaminate",)
        external = eval_input_fingerprints(config.evaluate, config.base_dir)
        if config.run.heldout_from and "shards" in stages:
            # the first run's held-out split (a complete output: its name is its fingerprint)
            # beside today's shards, whose val split is the newest increment's held-out part
            external = [*external, f"heldout_first:{Path(config.run.heldout_from).name}"]
        return Reads(stages=stages, external=tuple(external))

    def run(self, ctx: StageContext) -> StageResult:
        from pipeline.evaluate import run_evaluation

        model = model_stage(ctx.config)
        new_shards = shards_dir = ctx.inputs.get("shards")
        if ctx.config.run.heldout_from and shards_dir is not None:
            shards_dir = Path(ctx.config.run.heldout_from)  # val_bpb: on the first held-out
        bytes_per_token = None
        if shards_dir is not None:
            bytes_per_token = float(read_result(shards_dir).stats["bytes_per_token_val"])
        base_dir = None
        if model == "finetune" and ctx.config.evaluate.compare_base:
            from pipeline.finetune.stage import base_model_dir

            base_dir = base_model_dir(ctx.inputs["finetune"])
        contamination = None
        if "decontaminate" in ctx.inputs:
            contamination = read_result(ctx.inputs["decontaminate"]).details["contamination"]
        found = run_evaluation(
            ctx.inputs[model] / "final",
            ctx.config.evaluate,
            ctx.config.base_dir,
            ctx.out,
            shards_dir=shards_dir,
            bytes_per_token=bytes_per_token,
            log=ctx.log,
            base_model_dir=base_dir,
            contamination=contamination,
        )
        metrics = found["metrics"]
        if new_shards is not None and "val_bpb" in metrics:
            # a full run's held-out split is both the first and the newest
            metrics["val_bpb_first"] = metrics["val_bpb_new"] = metrics["val_bpb"]
            if new_shards != shards_dir:
                from pipeline.evaluate.increments import increment_metrics

                metrics.update(
                    increment_metrics(
                        ctx.inputs[model] / "final",
                        new_shards,
                        ctx.config.evaluate,
                        _start_model(ctx, model) if ctx.config.run.init_from else None,
                    )
                )
        return StageResult(
            metrics=found["metrics"],
            tables={
                "eval_table": found["table"],
                "generations": found["generations"],
                "skipped": found["skipped"],
            },
            counts={"quarantined_by_reason": found["quarantined"]},
        )

    def summary(self, result: StageResult) -> list[str]:
        from pipeline.reports import eval_markdown

        rows = result.tables.get("eval_table") or []
        return [eval_markdown(rows)] if rows else []


def _start_model(ctx: StageContext, model: str) -> Path | None:
    """The model folder pretraining started from (the champion): the one its train request
    names, or run.init_from fetched again."""
    import json

    request = ctx.inputs[model] / "train_request.json"
    if request.is_file():
        start = json.loads(request.read_text(encoding="utf-8")).get("init_from")
        if start and Path(start).is_dir():
            return Path(start)
    from pipeline.generate import resolve_model_dir

    return resolve_model_dir(str(ctx.config.run.init_from), ctx.tracking_uri)
