"""The clean stage: ingested documents in, repaired and filtered documents out (pipeline/clean)."""

from __future__ import annotations

from typing import Any

from pipeline.config import PipelineConfig
from pipeline.outputs import StageResult
from pipeline.stages.base import Reads, Stage, StageContext
from pipeline.stages.choices import pretrains


class Clean(Stage):
    name = "clean"
    version = 2
    sections = ("clean",)
    on_dask = True
    passed_count = "kept"

    def included(self, config: PipelineConfig) -> bool:
        return pretrains(config)

    def reads(self, config: PipelineConfig, tracking_uri: str | None) -> Reads:
        return Reads(stages=("ingest",))

    def run(self, ctx: StageContext) -> StageResult:
        from pipeline.clean import run_clean

        return StageResult.from_body(
            run_clean(ctx.inputs["ingest"], ctx.out, ctx.config.clean, ctx.executor, ctx.log)
        )

    def summary(self, result: StageResult) -> list[str]:
        from pipeline.reports import cleaning_sections

        return cleaning_sections(result)

    def tables(self, result: StageResult) -> dict[str, list[dict[str, Any]]]:
        tables = super().tables(result)
        rejected = [
            {"rule": rule, **example}
            for rule, examples in (result.details.get("examples_rejected") or {}).items()
            for example in examples
        ]
        if rejected:
            tables["rejected_examples"] = rejected
        return tables
