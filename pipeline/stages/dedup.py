"""The dedup stage: clean documents in, exact and near duplicates removed (pipeline/dedup)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig, resolve_path
from pipeline.outputs import StageResult
from pipeline.stages.base import Reads, Stage, StageContext
from pipeline.stages.choices import pretrains


class Dedup(Stage):
    name = "dedup"
    version = 2
    sections = ("dedup",)
    on_dask = True
    passed_count = "kept"

    def included(self, config: PipelineConfig) -> bool:
        return pretrains(config)

    def reads(self, config: PipelineConfig, tracking_uri: str | None) -> Reads:
        return Reads(stages=("clean",))

    def run(self, ctx: StageContext) -> StageResult:
        from pipeline.dedup import run_dedup

        cfg = ctx.config.dedup
        previous = Path(resolve_path(ctx.config, cfg.previous)) if cfg.previous else None
        return StageResult.from_body(
            run_dedup(ctx.inputs["clean"], ctx.out, cfg, ctx.executor, ctx.log, previous)
        )

    def summary(self, result: StageResult) -> list[str]:
        from pipeline.reports import dedup_sections

        return dedup_sections(result)

    def tables(self, result: StageResult) -> dict[str, list[dict[str, Any]]]:
        tables = super().tables(result)
        examples = (result.details.get("near_duplicates") or {}).get("examples")
        if examples:
            tables["near_duplicates"] = examples
        return tables
