"""Pretraining a GPT on token shards: `run_training(request) -> metrics`.

In: a `TrainRequest` (model and train config, token shards folder, output folder, tokenizer,
MLflow tracking URI and run id).
Out, under request.out_dir:
  - checkpoints/step-NNNNNN/: resumable checkpoints (see checkpoints.py), the last few kept;
  - final/: model.safetensors, model_config.json and tokenizer.json (when given);
  - train_metrics.json: steps, tokens_seen, final train/val loss, val_bpb, wall time, speed;
  - loss_curve.png.
Metrics stream to the MLflow run given (or a new one) while training runs.

If out_dir/checkpoints holds a complete checkpoint, training resumes from the latest one: the
same command, rerun after a crash or a kill, continues to max_steps.
"""

from __future__ import annotations

import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.loggers import MLFlowLogger

from pipeline.model.checkpoint import save_model
from pipeline.model.gpt import GPTConfig
from pipeline.outputs import write_json_atomic
from pipeline.train.checkpoints import (
    TRAINER_STATE_FILE,
    StepCheckpoint,
    latest_checkpoint,
    remove_incomplete,
)
from pipeline.train.data import TokenShardDataModule
from pipeline.train.lit_module import LitGPT
from pipeline.train.progress import ProgressLines, plot_loss_curve
from pipeline.train.request import TrainRequest

METRICS_FILE = "train_metrics.json"
LOSS_CURVE_FILE = "loss_curve.png"


class ExternalRunMLFlowLogger(MLFlowLogger):
    """Logs into a run that someone else (the orchestrator) opened and will close.

    Lightning's MLFlowLogger marks its run FINISHED or FAILED at the end; a run handed in by
    id belongs to its caller, so this one leaves the run's status alone.
    """

    def finalize(self, status: str = "success") -> None:
        return None


def make_logger(request: TrainRequest) -> MLFlowLogger | bool:
    if not request.mlflow_tracking_uri:
        return False
    # Always pass the tracking URI: MLFlowLogger's own default is the file store MLflow 3 refuses.
    if request.mlflow_run_id:
        return ExternalRunMLFlowLogger(
            tracking_uri=request.mlflow_tracking_uri, run_id=request.mlflow_run_id, log_model=False
        )
    return MLFlowLogger(
        experiment_name=request.mlflow_experiment,
        tracking_uri=request.mlflow_tracking_uri,
        log_model=False,
    )


def _write_final(lit: LitGPT, request: TrainRequest, out_dir: Path) -> Path:
    final = out_dir / "final"
    tmp = out_dir / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(lit.model, tmp)
    if request.tokenizer_path:
        shutil.copyfile(request.tokenizer_path, tmp / "tokenizer.json")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def run_training(request: TrainRequest) -> dict[str, Any]:
    """Train (or resume) to max_steps and write the outputs; returns the train metrics."""
    started = time.perf_counter()
    model_cfg = request.model_config()
    train = request.train_config()
    out_dir = Path(request.out_dir)
    ckpt_root = out_dir / "checkpoints"
    if request.tokenizer_path and not Path(request.tokenizer_path).is_file():
        raise FileNotFoundError(f"tokenizer not found: {request.tokenizer_path}")

    data = TokenShardDataModule(
        request.shards_dir,
        block_size=model_cfg.block_size,
        batch_size=train.batch_size,
        val_batches=train.val_batches,
        seed=train.seed,
        grad_accum_steps=train.grad_accum_steps,
    )
    data.check()  # fail early, with a clear message, on missing or too-small shards

    torch.manual_seed(train.seed)  # the initial weights (a resumed run overwrites them)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on tensor cores
    gpt_config = GPTConfig.from_model_config(model_cfg, request.vocab_size)
    lit = LitGPT(gpt_config, train, bytes_per_token_val=request.bytes_per_token_val)

    out_dir.mkdir(parents=True, exist_ok=True)
    remove_incomplete(ckpt_root)
    resume = latest_checkpoint(ckpt_root)
    lit.resume_weights_dir = resume

    use_bar = train.progress_bar and sys.stdout.isatty()
    callbacks: list[pl.Callback] = [
        StepCheckpoint(
            ckpt_root,
            every_steps=train.checkpoint_every_steps,
            keep_last=train.keep_last_checkpoints,
            max_steps=train.max_steps,
        )
    ]
    if use_bar:
        callbacks.append(TQDMProgressBar())
    else:
        callbacks.append(ProgressLines(train.log_every_steps, train.max_steps))
    logger = make_logger(request)
    trainer = pl.Trainer(
        accelerator=train.accelerator,
        devices=train.devices,
        strategy=train.strategy,
        num_nodes=train.num_nodes,
        precision=train.precision,
        max_steps=train.max_steps,
        max_epochs=-1,  # the train stream is endless: max_steps ends the run
        accumulate_grad_batches=train.grad_accum_steps,
        gradient_clip_val=train.grad_clip or None,
        val_check_interval=train.val_every_steps * train.grad_accum_steps,  # in micro-batches
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=train.log_every_steps,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,  # StepCheckpoint writes our own folders
        enable_progress_bar=use_bar,
        enable_model_summary=False,
        default_root_dir=str(out_dir),
    )

    is_main = trainer.is_global_zero
    tokens_per_step = (
        train.batch_size * train.grad_accum_steps * model_cfg.block_size * trainer.world_size
    )
    start_step = int(resume.name.split("-")[1]) if resume else 0
    if is_main:
        where = f"resuming from {resume}" if resume else "from scratch"
        print(
            f"training a {lit.model.num_params() / 1e6:.2f}M-param GPT for {train.max_steps} "
            f"steps of {tokens_per_step:,} tokens on {trainer.strategy.root_device.type} "
            f"x{trainer.world_size} ({train.precision}), {where}",
            flush=True,
        )

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
        fit_started = time.perf_counter()
        trainer.fit(
            lit,
            datamodule=data,
            ckpt_path=str(resume / TRAINER_STATE_FILE) if resume else None,
            weights_only=True,  # the .ckpt holds no pickled objects, only tensors and numbers
        )
        fit_seconds = time.perf_counter() - fit_started
        if lit.last_val_step != trainer.global_step:
            trainer.validate(lit, datamodule=data, verbose=False)

    steps = trainer.global_step
    metrics: dict[str, Any] = {
        "steps": steps,
        "tokens_seen": steps * tokens_per_step,
        "train_loss": lit.history["train"][-1][1] if lit.history["train"] else None,
        "val_loss": lit.last_val.get("val_loss"),
        "val_ppl": lit.last_val.get("val_ppl"),
        "val_bpb": lit.last_val.get("val_bpb"),
        "wall_seconds": round(time.perf_counter() - started, 3),
        "tokens_per_second": round((steps - start_step) * tokens_per_step / fit_seconds, 1)
        if steps > start_step
        else None,
        "num_params": lit.model.num_params(non_embedding=False),
        "num_params_non_embedding": lit.model.num_params(),
        "flops_per_token": lit.model.flops_per_token(),
        "resumed_from_step": start_step if resume else None,
        "device": trainer.strategy.root_device.type,
        "world_size": trainer.world_size,
        "precision": train.precision,
    }
    if is_main:
        _write_final(lit, request, out_dir)
        plot_loss_curve(
            lit.history, out_dir / LOSS_CURVE_FILE, title=f"{metrics['num_params'] / 1e6:.2f}M GPT"
        )
        write_json_atomic(out_dir / METRICS_FILE, metrics)
        summary = [f"done: {steps} steps", f"{metrics['tokens_seen']:,} tokens"]
        for name in ("train_loss", "val_loss", "val_bpb"):
            if metrics[name] is not None:
                summary.append(f"{name} {metrics[name]:.4f}")
        summary.append(f"{metrics['wall_seconds']:.1f}s")
        print(", ".join(summary), flush=True)
    return metrics
