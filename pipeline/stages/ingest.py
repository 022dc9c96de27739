"""The ingest stage: the configured sources in, document shards out (pipeline/ingest)."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.outputs import StageResult
from pipeline.stages.base import Reads, Stage, StageContext
from pipeline.stages.choices import pretrains


def _seen_fingerprint(seen_dir: str) -> list[str]:
    files = sorted(Path(seen_dir).glob("*.parquet"))
    return [f"seen:{p.name}:{p.stat().st_size}" for p in files]


class Ingest(Stage):
    name = "ingest"
    version = 3
    sections = ("ingest",)
    on_dask = True
    passed_count = "documents"

    def included(self, config: PipelineConfig) -> bool:
        return pretrains(config)  # the data stages feed pretraining only

    def reads(self, config: PipelineConfig, tracking_uri: str | None) -> Reads:
        from pipeline.ingest import source_input_fingerprint

        external = source_input_fingerprint(config.sources, config.base_dir)
        if config.run.seen_before:  # an incremental run: what earlier increments took in
            external += _seen_fingerprint(config.run.seen_before)
        return Reads(external=tuple(external))

    def run(self, ctx: StageContext) -> StageResult:
        from pipeline.ingest import run_ingest

        cfg = ctx.config
        result = StageResult.from_body(
            run_ingest(cfg.sources, cfg.base_dir, ctx.out, cfg.ingest, ctx.executor)
        )
        if cfg.run.seen_before:  # only documents no earlier increment took in
            from pipeline.incremental import drop_seen

            dropped = drop_seen(ctx.out, cfg.run.seen_before)
            result.counts["documents"] -= sum(dropped.values())
            result.counts["seen_before"] = sum(dropped.values())
            result.counts["seen_before_by_source"] = dropped
        return result
