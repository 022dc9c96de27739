"""The pretrain stage: token shards and the tokenizer in, a trained GPT out (pipeline/train),
trained in its own process (`python -m pipeline.train`)."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.outputs import StageResult, read_result
from pipeline.stages.base import Reads, Stage, StageContext
from pipeline.stages.choices import pretrains


class Pretrain(Stage):
    name = "pretrain"
    version = 2
    sections = ("model", "train")
    retries = 1  # training resumes from its last checkpoint: a retry loses little
    keep_partial = True

    def included(self, config: PipelineConfig) -> bool:
        return pretrains(config)

    def reads(self, config: PipelineConfig, tracking_uri: str | None) -> Reads:
        # an incremental run continues from the champion's weights (and optimizer state)
        init: tuple[str, ...] = ()
        if config.run.init_from:
            init = (f"init:{config.run.init_from}", f"continuation:{config.train.continuation}")
            if config.run.init_state_from and config.train.continuation == "continue":
                init += (f"init_state:{config.run.init_state_from}",)
        return Reads(stages=("shards", "tokenizer"), external=init)

    def run(self, ctx: StageContext) -> StageResult:
        from pipeline.train.launch import launch_training
        from pipeline.train.request import PretrainData, TrainRequest

        shards = read_result(ctx.inputs["shards"]).stats
        data = PretrainData(
            shards_dir=str(ctx.inputs["shards"]),
            vocab_size=int(shards["vocab_size"]),
            bytes_per_token_val=float(shards["bytes_per_token_val"]),
        )
        request = TrainRequest(
            model=ctx.config.model,
            train=ctx.config.train,
            data=data,
            out_dir=str(ctx.out),
            tokenizer_path=str(ctx.inputs["tokenizer"] / "tokenizer.json"),
            mlflow_tracking_uri=ctx.tracking_uri,
            mlflow_run_id=ctx.mlflow_run_id,
        )
        if ctx.config.run.init_from:
            from pipeline.generate import resolve_model_dir

            request.init_from = str(resolve_model_dir(ctx.config.run.init_from, ctx.tracking_uri))
            request.init_state_from = ctx.config.run.init_state_from
        request_path = ctx.out / "train_request.json"
        request.to_json(request_path)
        launch_training(request_path, ctx.log, ctx.config.train.launcher, request.environment())
        return StageResult(
            metrics=_train_metrics(ctx.out),
            files={"model": "final", "loss_curve": "loss_curve.png"},
        )


def _train_metrics(out: Path) -> dict:
    import json

    from pipeline.train.pretrain import METRICS_FILE

    return json.loads((out / METRICS_FILE).read_text(encoding="utf-8"))
