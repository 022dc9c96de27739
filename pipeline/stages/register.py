"""The register stage: the evaluated model in, a version in the MLflow model registry out, with
@champion moved when it wins by the configured rule (pipeline/tracking/registry.py)."""

from __future__ import annotations

from pipeline.config import PipelineConfig
from pipeline.outputs import StageResult, read_result
from pipeline.stages.base import Reads, Stage, StageContext
from pipeline.stages.choices import documents_stage, finetunes, model_stage, pretrains


class Register(Stage):
    name = "register"
    version = 2
    sections = ("register",)
    retries = 2  # registry writes can meet a locked SQLite database

    def reads(self, config: PipelineConfig, tracking_uri: str | None) -> Reads:
        stages: tuple[str, ...] = ("evaluate",)
        if pretrains(config):
            stages += ("pretrain", "shards", "tokenizer")
        if finetunes(config):
            stages += ("finetune",)
        # a registration is only 'done' in the registry it went to; no registry: planning
        # needs no MLflow (the GPU check's machine)
        registry = ""
        if tracking_uri:
            from pipeline.tracking.runs import redact

            registry = redact(tracking_uri)
        return Reads(stages=stages, external=(registry,))

    def run(self, ctx: StageContext) -> StageResult:
        if not ctx.tracking_uri or not ctx.mlflow_run_id:
            raise RuntimeError("the register stage needs an MLflow tracking URI and run")
        from pipeline.config import config_hash
        from pipeline.tracking.registry import PromotionRule, git_commit, register_model_dir

        evaluation = read_result(ctx.inputs["evaluate"])
        cfg = ctx.config.register
        tags = {
            "llmpipe.eval_fingerprint": ctx.inputs["evaluate"].name,
            "llmpipe.config_hash": config_hash(ctx.config),
            "llmpipe.eval_tasks": ",".join(
                sorted({row["task"] for row in evaluation.tables.get("eval_table", [])} - {"model"})
            ),
            **git_commit(),
        }
        if "shards" in ctx.inputs:  # the data the model was pretrained on
            shards = read_result(ctx.inputs["shards"])
            tags.update(
                {
                    "llmpipe.data_fingerprint": ctx.inputs["shards"].name,
                    "llmpipe.documents_fingerprint": str(
                        shards.inputs.get(documents_stage(ctx.config), "")
                    ),
                    "llmpipe.tokenizer_fingerprint": ctx.inputs["tokenizer"].name,
                    "llmpipe.pretrain_fingerprint": ctx.inputs["pretrain"].name,
                    "llmpipe.pretrain_output": str(ctx.inputs["pretrain"]),
                    "llmpipe.shards_output": str(ctx.inputs["shards"]),
                }
            )
        if "finetune" in ctx.inputs:
            tags["llmpipe.finetune_fingerprint"] = ctx.inputs["finetune"].name
            tags["llmpipe.finetune_output"] = str(ctx.inputs["finetune"])
            tags["llmpipe.finetune_init"] = ctx.config.finetune.init_from or "pretrain"
        registered = register_model_dir(
            ctx.tracking_uri,
            ctx.mlflow_run_id,
            ctx.inputs[model_stage(ctx.config)] / "final",
            cfg.model_name,
            evaluation.metrics,
            PromotionRule(
                cfg.metric, cfg.mode, cfg.min_improvement, cfg.guard_metric, cfg.guard_tolerance
            ),
            tags=tags,
            registration_key=ctx.fingerprint,  # a rerun after a kill completes that version
        )
        return StageResult(details={"registered": registered})

    def summary(self, result: StageResult) -> list[str]:
        from pipeline.reports import registered_section

        return registered_section(result)
