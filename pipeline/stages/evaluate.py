"""The evaluate stage: the model in, its scores on held-out data, benchmarks and the
application tasks out (pipeline/evaluate)."""

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
        outputs = {}
        if config.run.heldout_from and "shards" in stages:  # the first run's held-out split
            outputs["shards"] = Path(config.run.heldout_from)
        external = eval_input_fingerprints(config.evaluate, config.base_dir)
        return Reads(stages=stages, outputs=outputs, external=tuple(external))

    def run(self, ctx: StageContext) -> StageResult:
        from pipeline.evaluate import run_evaluation

        model = model_stage(ctx.config)
        shards_dir = ctx.inputs.get("shards")
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
