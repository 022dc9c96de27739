"""The tokenizer stage (byte-level BPE or characters trained on the documents, or a given
tokenizer) and the shards stage (documents in, train/val token shards out): pipeline/tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig, fingerprint_fields
from pipeline.outputs import StageResult
from pipeline.stages.base import Reads, Stage, StageContext
from pipeline.stages.choices import documents_stage, pretrains


class Tokenizer(Stage):
    name = "tokenizer"
    version = 2

    def included(self, config: PipelineConfig) -> bool:
        return pretrains(config)

    def given_output(self, config: PipelineConfig) -> Path | None:
        # an incremental run keeps the first run's tokenizer
        return Path(config.run.tokenizer_from) if config.run.tokenizer_from else None

    def reads(self, config: PipelineConfig, tracking_uri: str | None) -> Reads:
        # a tokenizer given in the config reads no documents
        return Reads(stages=() if config.tokenizer.pretrained else (documents_stage(config),))

    def fields(self, config: PipelineConfig, tracking_uri: str | None = None) -> dict[str, Any]:
        from pipeline.tokenizer.stage import tokenizer_fields

        return tokenizer_fields(config, tracking_uri)

    def run(self, ctx: StageContext) -> StageResult:
        from pipeline.tokenizer.stage import run_tokenizer_stage

        docs = ctx.inputs.get(documents_stage(ctx.config))
        return StageResult.from_body(
            run_tokenizer_stage(docs, ctx.out, ctx.config, ctx.tracking_uri)
        )


class Shards(Stage):
    name = "shards"
    version = 2
    sections = ("shards",)

    def included(self, config: PipelineConfig) -> bool:
        return pretrains(config)

    def reads(self, config: PipelineConfig, tracking_uri: str | None) -> Reads:
        return Reads(stages=(documents_stage(config), "tokenizer"))

    def fields(self, config: PipelineConfig, tracking_uri: str | None = None) -> dict[str, Any]:
        return {"shards": fingerprint_fields(config.shards)}

    def run(self, ctx: StageContext) -> StageResult:
        from pipeline.tokenizer.stage import run_shards_stage

        docs = ctx.inputs[documents_stage(ctx.config)]
        body = run_shards_stage(docs, ctx.inputs["tokenizer"], ctx.out, ctx.config, ctx.executor)
        return StageResult.from_body(body)

    def summary(self, result: StageResult) -> list[str]:
        from pipeline.reports import mixture_sections

        return mixture_sections(result)

    def tables(self, result: StageResult) -> dict[str, list[dict[str, Any]]]:
        tables = super().tables(result)
        mixture = (result.details.get("mixture") or {}).get("sources") or {}
        if mixture:
            tables["mixture"] = [{"source": name, **entry} for name, entry in mixture.items()]
        return tables
