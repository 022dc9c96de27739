"""The finetune stage: a starting model and task files in, a fine-tuned model out
(pipeline/finetune), trained by the same process as pretraining."""

from __future__ import annotations

from pipeline.config import PipelineConfig
from pipeline.outputs import StageResult
from pipeline.stages.base import Reads, Stage, StageContext
from pipeline.stages.choices import finetunes


class Finetune(Stage):
    name = "finetune"
    version = 1
    sections = ("finetune",)
    retries = 1  # training resumes from its last checkpoint
    keep_partial = True

    def included(self, config: PipelineConfig) -> bool:
        return finetunes(config)

    def reads(self, config: PipelineConfig, tracking_uri: str | None) -> Reads:
        from pipeline.finetune.examples import task_input_files
        from pipeline.finetune.stage import init_identity
        from pipeline.ingest.files import file_content_digest

        files = [
            f"{path.name}:{file_content_digest(path)}"
            for task in config.finetune.tasks
            for path in task_input_files(task, config.base_dir)
        ]
        external = tuple(init_identity(config, tracking_uri) + files)
        # from the pipeline's own pretrained model, or from one the config names
        return Reads(stages=() if config.finetune.init_from else ("pretrain",), external=external)

    def run(self, ctx: StageContext) -> StageResult:
        from pipeline.finetune.stage import run_finetune_stage
        from pipeline.train.launch import launch_training

        body = run_finetune_stage(
            ctx.config,
            ctx.inputs.get("pretrain"),
            ctx.out,
            ctx.tracking_uri,
            ctx.mlflow_run_id,
            ctx.log,
            launch_training,
        )
        return StageResult.from_body(body)
