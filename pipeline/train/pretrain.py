"""Pretraining a GPT on token shards: `run_training(request) -> metrics`.

In: a `TrainRequest` (the model, the train config, the data: token shards or SFT examples,
output folder, tokenizer, starting weights, LoRA, MLflow tracking URI and run id).
Out, under request.out_dir:
  - checkpoints/step-NNNNNN/: resumable checkpoints (see checkpoints.py), the last few kept,
    and checkpoints/best/: the weights of the lowest val_loss;
  - final/: model.safetensors, model_config.json (the last checkpoint's, or with
    `final_weights: best` the lowest val_loss's) and tokenizer.json;
  - train_metrics.json: steps, tokens_seen, final train/val loss, val_bpb, wall time, speed;
  - samples/step-NNNNNN.txt: generations after each validation (with a tokenizer);
  - loss_curve.png.
Metrics stream to the MLflow run given (or a new one) while training runs.

The Trainer takes precision, gradient accumulation and clipping, strategy (auto, ddp, fsdp, ...)
and num_nodes from the config. With several devices Lightning's launcher re-runs this process's
command once per device, which is why training is its own process (`python -m pipeline.train`);
under torchrun or SLURM each process is started by the launcher instead (README: Scale-out).

If out_dir/checkpoints holds a complete checkpoint, training resumes from the latest one: the
same command, rerun after a crash or a kill, continues to max_steps (or `train.tokens`, turned
into steps). With `init_from` (an incremental run) training starts from those weights and, with
`train.continuation: continue`, the optimizer moments of `init_state_from` and the continuation
schedule (lit_module.lr_factor).
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.loggers import MLFlowLogger

from pipeline.config import TrainConfig
from pipeline.model.checkpoint import load_state_dict, load_weights, save_state_dict
from pipeline.model.gpt import GPT
from pipeline.model.lora import add_lora, merged_state_dict
from pipeline.outputs import write_json_atomic
from pipeline.train.checkpoints import (
    BEST_FOLDER,
    TRAINER_STATE_FILE,
    StepCheckpoint,
    latest_checkpoint,
    remove_incomplete,
)
from pipeline.train.data import data_module_for
from pipeline.train.lit_module import LitGPT, NonFiniteLossError, peak_flops
from pipeline.train.progress import ProgressTicks, plot_loss_curve
from pipeline.train.request import PretrainData, TrainRequest
from pipeline.train.samples import SampleGenerations
from pipeline.train.ticks import ticks_requested

METRICS_FILE = "train_metrics.json"
LOSS_CURVE_FILE = "loss_curve.png"
# Lightning's notes at every launch that say nothing about this run (our own first line names
# the device): an advertisement for its cloud logger, the accelerators it did not find, and
# that max_steps was reached. Its warnings and other notes still show.
_LIGHTNING_CHATTER = (
    "\N{ELECTRIC LIGHT BULB} Tip:",
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "`Trainer.fit` stopped: `max_steps=",
)


class _QuietLightning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        return not str(record.getMessage()).startswith(_LIGHTNING_CHATTER)


for _name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_QuietLightning())


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


def resolve_precision(train: TrainConfig) -> str:
    """The Trainer precision: `auto` is bf16-mixed on a GPU that supports it, else 32-true."""
    if train.precision != "auto":
        return train.precision
    gpu = train.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


def make_strategy(name: str) -> Any:
    """A Lightning strategy from its config name; `fsdp` shards parameters, gradients and
    optimizer state per transformer block (FULL_SHARD) and saves full state dicts."""
    if name == "fsdp":
        from pytorch_lightning.strategies import FSDPStrategy

        from pipeline.model.gpt import Block

        return FSDPStrategy(
            auto_wrap_policy={Block},
            sharding_strategy="FULL_SHARD",
            state_dict_type="full",
            use_orig_params=True,  # param groups by parameter, and torch.compile, keep working
        )
    return name


def build_trainer(
    train: TrainConfig,
    out_dir: Path,
    callbacks: list[pl.Callback],
    logger: MLFlowLogger | bool = False,
    progress_bar: bool = False,
) -> pl.Trainer:
    """The Lightning Trainer for a TrainConfig (also used by the benchmarks)."""
    return pl.Trainer(
        accelerator=train.accelerator,
        devices=train.devices,
        strategy=make_strategy(train.strategy),
        num_nodes=train.num_nodes,
        precision=resolve_precision(train),
        max_steps=train.max_steps,
        max_epochs=-1,  # the train stream is endless: max_steps ends the run
        accumulate_grad_batches=train.grad_accum_steps,
        gradient_clip_val=train.grad_clip or None,  # applied in LitGPT.configure_gradient_clipping
        val_check_interval=train.val_every_steps * train.grad_accum_steps,  # in micro-batches
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=train.log_every_steps,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,  # StepCheckpoint writes our own folders
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,  # each rank reads its own part (data.py)
        default_root_dir=str(out_dir),
    )


def _write_final(checkpoint: Path, request: TrainRequest, out_dir: Path, model: GPT) -> Path:
    """final/ = a checkpoint's weights (LoRA adapters merged in: a plain model folder) and
    config, plus the tokenizer; renamed into place, so a crash never leaves half a final/.
    The best/ folder holds merged weights already."""
    final = out_dir / "final"
    tmp = out_dir / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    tensors = load_state_dict(checkpoint, model.config)
    if checkpoint.name != BEST_FOLDER:
        tensors = merged_state_dict(model, tensors)
    save_state_dict(tensors, model.config, tmp)
    if request.tokenizer_path:
        shutil.copyfile(request.tokenizer_path, tmp / "tokenizer.json")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def steps_for_tokens(train: TrainConfig, block_size: int, world_size: int) -> int:
    """Optimizer steps for a budget of train.tokens (rounded up: at least the budget)."""
    per_step = train.batch_size * train.grad_accum_steps * block_size * world_size
    return max(1, -(-int(train.tokens or 0) // per_step))


def _world_size(train: TrainConfig) -> int:
    """Processes the Trainer will start: nodes x devices ("auto": the GPUs, else 1)."""
    devices = train.devices
    if isinstance(devices, str):
        if devices.strip().lstrip("-").isdigit():
            devices = int(devices)
        elif "," in devices:
            devices = len([d for d in devices.split(",") if d.strip()])
        else:
            gpu = train.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
            devices = torch.cuda.device_count() if gpu else 1
    if devices == -1:
        devices = torch.cuda.device_count() if torch.cuda.is_available() else 1
    return train.num_nodes * max(1, int(devices))


def make_data(request: TrainRequest, train: TrainConfig, block_size: int) -> pl.LightningDataModule:
    """Token shards for pretraining, or the prepared (prompt, response) examples for SFT (built
    by what pipeline.finetune.data registers: see pipeline.train.data.DATA_MODULES)."""
    return data_module_for(request, train, block_size)


def run_training(
    request: TrainRequest, extra_callbacks: list[pl.Callback] | None = None
) -> dict[str, Any]:
    """Train (or resume) to max_steps and write the outputs; returns the train metrics.

    `extra_callbacks` are added to the Trainer's (tests use one to inject faults).
    """
    started = time.perf_counter()
    train = request.train
    out_dir = Path(request.out_dir)
    ckpt_root = out_dir / "checkpoints"
    if request.tokenizer_path and not Path(request.tokenizer_path).is_file():
        raise FileNotFoundError(f"tokenizer not found: {request.tokenizer_path}")

    gpt_config = request.architecture()
    if train.tokens:  # the budget in tokens: as many steps as it takes
        train = train.model_copy(
            update={"max_steps": steps_for_tokens(train, gpt_config.block_size, _world_size(train))}
        )
    data = make_data(request, train, gpt_config.block_size)
    data.check()  # fail early, with a clear message, on missing or too-small data

    torch.manual_seed(train.seed)  # the initial weights (a resumed run overwrites them)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on tensor cores

    def print_progress(step: int, text: str) -> None:
        print(f"step {step}/{train.max_steps} | {text}", flush=True)

    use_bar = train.progress_bar and sys.stdout.isatty()
    lit = LitGPT(
        gpt_config,
        train,
        bytes_per_token_val=getattr(request.data, "bytes_per_token_val", None),
        print_progress=None if use_bar else print_progress,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    remove_incomplete(ckpt_root)
    resume = latest_checkpoint(ckpt_root)
    lit.resume_weights_dir = resume
    if request.init_from and resume is None:
        # Continue from earlier weights (an incremental run's champion); a resumed attempt has
        # them in its own checkpoint already.
        load_weights(lit.model, Path(request.init_from))
    if (
        request.init_from
        and train.continuation == "continue"
        and isinstance(request.data, PretrainData)
    ):
        # continued pretraining (fine-tuning keeps its own schedule): the continuation
        # schedule, and the optimizer moments that go with those weights
        lit.continuing = True
        if request.init_state_from:
            lit.init_state_from = Path(request.init_state_from)
        else:  # a fresh optimizer is warmed up as a first run's is, not thrown in at the peak
            lit.train_config = train.model_copy(
                update={
                    "continue_warmup_steps": max(train.continue_warmup_steps, train.warmup_steps)
                }
            )
    lora = request.lora
    if lora:  # adapters only train; a resumed run gets them from its checkpoint
        trainable = add_lora(
            lit.model,
            lora.rank,
            lora.alpha,
            lora.dropout,
            lora.targets,
            train_embeddings=lora.train_embeddings,
        )
        print(
            f"LoRA rank {lora.rank} on {', '.join(lora.targets)}: {trainable:,} "
            f"trainable parameters of {lit.model.num_params(non_embedding=False):,}",
            flush=True,
        )

    callbacks: list[pl.Callback] = [
        StepCheckpoint(
            ckpt_root,
            every_steps=train.checkpoint_every_steps,
            keep_last=train.keep_last_checkpoints,
            max_steps=train.max_steps,
            val_every_steps=train.val_every_steps,
            keep_best=train.keep_best_checkpoint,
        )
    ]
    if request.tokenizer_path and train.sample_tokens and train.sample_prompts:
        callbacks.append(
            SampleGenerations(
                request.tokenizer_path,
                train.sample_prompts,
                train.sample_tokens,
                out_dir,
                seed=train.seed,
            )
        )
    if use_bar:
        callbacks.append(TQDMProgressBar())
    elif ticks_requested():  # the orchestrator draws the bar from `@progress` lines
        callbacks.append(ProgressTicks(train.max_steps))
    callbacks += extra_callbacks or []
    trainer = build_trainer(train, out_dir, callbacks, make_logger(request), progress_bar=use_bar)

    if train.tokens and trainer.world_size != _world_size(train):
        raise RuntimeError(
            f"train.tokens: {trainer.world_size} processes train, {_world_size(train)} were "
            "counted for the steps: set train.devices to a number"
        )
    is_main = trainer.is_global_zero
    tokens_per_step = (
        train.batch_size * train.grad_accum_steps * gpt_config.block_size * trainer.world_size
    )
    start_step = int(resume.name.split("-")[1]) if resume else 0
    device = trainer.strategy.root_device
    if device.type == "cuda":
        lit.peak_flops = train.peak_flops or peak_flops(
            torch.cuda.get_device_name(device), resolve_precision(train)
        )
    if is_main:
        where = (
            f"resuming from {resume}"
            if resume
            else f"starting from {request.init_from}"
            if request.init_from
            else "from scratch"
        )
        print(
            f"training a {lit.model.num_params() / 1e6:.2f}M-param {gpt_config.arch} GPT for "
            f"{train.max_steps} steps of {tokens_per_step:,} tokens on {device.type} "
            f"x{trainer.world_size} ({resolve_precision(train)}), {where}",
            flush=True,
        )

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
        fit_started = time.perf_counter()
        try:
            trainer.fit(
                lit,
                datamodule=data,
                ckpt_path=str(resume / TRAINER_STATE_FILE) if resume else None,
                weights_only=True,  # the .ckpt holds no pickled objects, only tensors and numbers
            )
        except NonFiniteLossError as exc:
            last = latest_checkpoint(ckpt_root)
            where = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
            raise NonFiniteLossError(f"{exc}; {where}") from None
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
        "val_tokens": data.val_tokens(trainer.world_size),
        "wall_seconds": round(time.perf_counter() - started, 3),
        "tokens_per_second": round((steps - start_step) * tokens_per_step / fit_seconds, 1)
        if steps > start_step
        else None,
        # the median rate between log lines: no compile, validation or checkpoint pauses
        "steady_tokens_per_second": round(statistics.median(lit.logged_rates), 1)
        if lit.logged_rates
        else None,
        "num_params": lit.model.num_params(non_embedding=False),
        "num_params_non_embedding": lit.model.num_params(),
        "flops_per_token": lit.model.flops_per_token(),
        "arch": gpt_config.arch,
        "skipped_steps": len(lit.skipped_steps),
        "resumed_from_step": start_step if resume else None,
        "device": device.type,
        "world_size": trainer.world_size,
        "precision": resolve_precision(train),
    }
    if device.type == "cuda":  # what this process took at most (the caching allocator's view)
        metrics["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 3)
    metrics.update(getattr(data, "stats", {}))  # fine-tuning: examples read, truncated
    if lora:
        metrics["trainable_params"] = trainable
    best = ckpt_root / BEST_FOLDER / "best.json"
    if is_main and best.is_file():
        found = json.loads(best.read_text())
        metrics["best_val_loss"], metrics["best_step"] = found["val_loss"], found["step"]
    if is_main:
        last = latest_checkpoint(ckpt_root)
        if last is None:
            raise RuntimeError(f"training ended without a checkpoint in {ckpt_root}")
        if train.final_weights == "best" and best.is_file():
            last = best.parent
        metrics["final_weights"] = "best" if last.name == BEST_FOLDER else "last"
        _write_final(last, request, out_dir, lit.model)
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
