"""The decontaminate stage: deduplicated documents in, documents without evaluation text out
(pipeline/decontaminate).

Its own stage, not a phase of dedup: it depends on the evaluation files too, so a new eval set
re-runs it alone, and dedup's output is shared by configs with and without it.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import PipelineConfig
from pipeline.outputs import StageResult
from pipeline.stages.base import Reads, Stage, StageContext
from pipeline.stages.choices import decontaminates


class Decontaminate(Stage):
    name = "decontaminate"
    version = 1
    sections = ("decontaminate",)

    def included(self, config: PipelineConfig) -> bool:
        return decontaminates(config)

    def reads(self, config: PipelineConfig, tracking_uri: str | None) -> Reads:
        from pipeline.decontaminate import eval_inputs

        return Reads(stages=("dedup",), external=tuple(eval_inputs(config)))

    def run(self, ctx: StageContext) -> StageResult:
        from pipeline.decontaminate import run_decontaminate

        # Evaluation indexes are cached beside the stage's outputs, by the eval files' contents.
        cache = ctx.out.parent / ".eval-index"
        body = run_decontaminate(
            ctx.inputs["dedup"], ctx.out, ctx.config, cache, ctx.executor, ctx.log
        )
        return StageResult.from_body(body)

    def summary(self, result: StageResult) -> list[str]:
        from pipeline.reports import contamination_sections

        return contamination_sections(result)

    def tables(self, result: StageResult) -> dict[str, list[dict[str, Any]]]:
        tables = super().tables(result)
        sets = (result.details.get("contamination") or {}).get("sets") or {}
        if sets:
            tables["contamination"] = [{"eval_set": name, **entry} for name, entry in sets.items()]
        return tables
