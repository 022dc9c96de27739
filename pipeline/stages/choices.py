"""Which stages a config's pipeline has, and which stage a later one reads, decided in one place.

In: a `PipelineConfig`. Out: booleans and stage names (no stage imports them twice).
"""

from __future__ import annotations

from pipeline.config import PipelineConfig


def pretrains(config: PipelineConfig) -> bool:
    """Pretraining (and the data stages before it) run unless fine-tuning starts elsewhere."""
    return config.pretrains


def finetunes(config: PipelineConfig) -> bool:
    return config.finetune.enabled


def decontaminates(config: PipelineConfig) -> bool:
    return pretrains(config) and config.decontaminate.enabled


def filters_by_quality(config: PipelineConfig) -> bool:
    return pretrains(config) and config.quality.enabled


def documents_stage(config: PipelineConfig) -> str:
    """The last document stage: its output is what the tokenizer and the shards read."""
    if filters_by_quality(config):
        return "quality"
    return "decontaminate" if decontaminates(config) else "dedup"


def model_stage(config: PipelineConfig) -> str:
    """The stage whose final/ model is evaluated and registered."""
    return "finetune" if finetunes(config) else "pretrain"
