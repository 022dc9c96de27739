"""The quality stage: documents in, the ones a trained classifier scores best out
(pipeline/quality)."""

from __future__ import annotations

from typing import Any

from pipeline.config import PipelineConfig
from pipeline.outputs import StageResult
from pipeline.stages.base import Reads, Stage, StageContext
from pipeline.stages.choices import decontaminates, filters_by_quality


def _documents(config: PipelineConfig) -> str:
    return "decontaminate" if decontaminates(config) else "dedup"


class Quality(Stage):
    name = "quality"
    version = 1
    sections = ("quality",)

    def included(self, config: PipelineConfig) -> bool:
        return filters_by_quality(config)

    def reads(self, config: PipelineConfig, tracking_uri: str | None) -> Reads:
        from pipeline.quality import reference_inputs

        external = tuple(reference_inputs(config, tracking_uri))
        return Reads(stages=(_documents(config),), external=external)

    def run(self, ctx: StageContext) -> StageResult:
        from pipeline.quality import run_quality

        docs = ctx.inputs[_documents(ctx.config)]
        body = run_quality(
            docs, ctx.out, ctx.config, ctx.tracking_uri, ctx.executor, ctx.log, ctx.mlflow_run_id
        )
        return StageResult.from_body(body)

    def summary(self, result: StageResult) -> list[str]:
        from pipeline.reports import quality_sections

        return quality_sections(result)

    def tables(self, result: StageResult) -> dict[str, list[dict[str, Any]]]:
        tables = super().tables(result)
        deciles = (result.details.get("quality") or {}).get("deciles") or []
        if deciles:
            tables["quality_deciles"] = deciles
        return tables
