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
        # an incremental run replays earlier increments' shards (complete, immutable outputs:
        # their folder names are their fingerprints)
        replay = tuple(f"replay:{Path(folder).name}" for folder in _replay_from(config))
        return Reads(stages=(documents_stage(config), "tokenizer"), external=replay)

    def fields(self, config: PipelineConfig, tracking_uri: str | None = None) -> dict[str, Any]:
        fields: dict[str, Any] = {"shards": fingerprint_fields(config.shards)}
        if _replay_from(config):
            fields["replay_fraction"] = config.run.replay_fraction
        return fields

    def run(self, ctx: StageContext) -> StageResult:
        from pipeline.tokenizer.stage import run_shards_stage

        docs = ctx.inputs[documents_stage(ctx.config)]
        body = run_shards_stage(docs, ctx.inputs["tokenizer"], ctx.out, ctx.config, ctx.executor)
        earlier = _replay_from(ctx.config)
        if earlier:
            from pipeline.tokenizer.replay import add_replay

            replay = add_replay(
                ctx.out,
                earlier,
                ctx.config.run.replay_fraction,
                int(body["stats"]["eot_id"]),
                int(body["stats"]["vocab_size"]),
                ctx.config.shards.tokens_per_shard,
            )
            by_folder = replay.pop("replay_by_folder")
            body["counts"].update(replay)
            body["counts"]["train_tokens"] += replay["replay_tokens"]
            body["replay"] = {"fraction": ctx.config.run.replay_fraction, "from": by_folder}
            ctx.log(
                f"shards: replayed {replay['replay_tokens']:,} tokens "
                f"({replay['replay_documents']:,} documents) of {len(earlier)} earlier "
                f"increment(s) beside {replay['new_train_tokens']:,} new"
            )
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


def _replay_from(config: PipelineConfig) -> list[str]:
    """The earlier shards to replay (none with replay_fraction 0)."""
    return list(config.run.replay_from) if config.run.replay_fraction > 0 else []
