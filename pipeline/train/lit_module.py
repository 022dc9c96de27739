"""The LightningModule that pretrains a GPT on next-token prediction.

In: a `GPTConfig`, the `TrainConfig` (optimizer, schedule, compile, logging) and, for bits per
byte, the val split's mean bytes per token.
Out: `LitGPT`, whose `model` attribute is the plain `GPT` (what gets saved and exported). Every
log_every_steps optimizer steps it sends train_loss, lr, grad_norm, tokens_seen, tokens_per_second
and, on a GPU with a known peak, mfu to the loggers (and prints a progress line when asked); after
each validation, val_loss, val_ppl and val_bpb. The step is always the optimizer step count.
`history` keeps [step, loss] pairs for the loss curve and travels in the checkpoint.

Optimizer: AdamW (fused on CUDA) with weight decay on matrices only: linear weights, and the
embeddings unless `decay_embeddings` is off; biases and norm weights never decay. Learning rate:
linear warmup, then a cosine to min_lr at max_steps, or warmup-stable-decay (see `lr_factor`),
through a LambdaLR stepped once per optimizer step. Continuing from an earlier run (an
incremental increment): its AdamW moments are loaded when the shapes match
(`carry_optimizer_state`) and the schedule re-warms from min_lr to a lower peak.

A step whose gradient norm is not finite (a NaN or inf loss, or an overflow in backward) is not
applied: its gradients are dropped before the optimizer sees them and it is reported;
`max_bad_steps` of them in a row stop the run with `NonFiniteLossError`, and the last checkpoint
(written before them, from good weights) stays the one to resume from.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn as nn

from pipeline.config import TrainConfig
from pipeline.model.checkpoint import load_state_dict
from pipeline.model.gpt import GPT, IGNORE_INDEX, GPTConfig

# Dense bf16 tensor-core peaks per device (FLOP/s), matched in order against the lower-cased
# CUDA device name (anchors-training.md §5; the datasheets' "with sparsity" numbers halved).
# Lightning's ThroughputMonitor does not recognise every name (H200 among them), hence our own.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("gb200", 2.5e15),
    ("b200", 2.25e15),
    ("h200 nvl", 836e12),
    ("h200", 989e12),
    ("gh200", 989e12),
    ("h100 nvl", 835e12),
    ("h100 pcie", 756e12),
    ("h100", 989e12),
    ("h800", 989e12),
    ("a100", 312e12),
    ("a800", 312e12),
    ("l40s", 362e12),
    ("l4", 121e12),
    ("a10g", 70e12),
    ("a10", 125e12),
)


def peak_flops(device_name: str, precision: str) -> float | None:
    """Peak FLOP/s of one device for this precision; None when the device is not in the table.

    fp32 training runs on TF32 tensor cores (allowed by set_float32_matmul_precision("high")),
    which peak at half the bf16 rate on these GPUs.
    """
    name = device_name.lower()
    for key, flops in PEAK_BF16_FLOPS:
        if key in name:
            return flops if ("16" in precision) else flops / 2
    return None


class NonFiniteLossError(RuntimeError):
    """Too many optimizer steps in a row had a NaN or infinite loss or gradient."""


def lr_factor(step: int, train: TrainConfig, continuing: bool = False) -> float:
    """Learning rate at optimizer step `step` (0-based), as a fraction of train.learning_rate.

    Warmup: linear from lr/(warmup+1) to lr. Then `cosine`: a half cosine from lr to min_lr at
    max_steps (nanoGPT's get_lr). Or `wsd` (warmup-stable-decay): lr until the last
    decay_fraction of the steps, then down to min_lr at max_steps, linearly or as 1 - sqrt.

    `continuing` (pretraining from an earlier run's weights and optimizer state, with
    `continuation: continue`): the earlier run ended at min_lr, so the rate goes from there
    over continue_warmup_steps (default 0: at once, the optimizer's moments are warm) to
    continue_lr_fraction x lr (default 1: the first run's stable-phase rate), and then decays
    to min_lr by the same shape, as a WSD run branches a new decay off its stable phase.
    bench/nightly.py measured it against a re-warmup to half the peak and a restart (fresh
    moments, full warmup): it was best on the first day's and on each day's new held-out.
    """
    peak, floor = train.learning_rate, train.min_lr
    warmup = train.warmup_steps
    if continuing:
        peak = max(floor, train.learning_rate * train.continue_lr_fraction)
        warmup = train.continue_warmup_steps
        if step < warmup:
            return (floor + (peak - floor) * (step + 1) / (warmup + 1)) / train.learning_rate
    elif step < warmup:
        return (step + 1) / (warmup + 1)
    if step >= train.max_steps:
        return floor / train.learning_rate
    if train.schedule == "wsd":
        decay_steps = max(1, round(train.decay_fraction * train.max_steps))
        decay_start = max(warmup, train.max_steps - decay_steps)
        if step < decay_start:
            return peak / train.learning_rate
        progress = (step - decay_start) / max(1, train.max_steps - decay_start)
        remaining = 1.0 - (math.sqrt(progress) if train.decay_shape == "sqrt" else progress)
        return (floor + (peak - floor) * remaining) / train.learning_rate
    progress = (step - warmup) / max(1, train.max_steps - warmup)
    return (
        floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)
    ) / train.learning_rate


def carry_optimizer_state(optimizer: torch.optim.Optimizer, state_path: Path) -> str:
    """Load the AdamW moments of an earlier run (its trainer_state.ckpt, read with
    weights_only=True) into `optimizer` when every parameter's shape matches; the learning
    rate, betas and weight decay stay this run's. Returns what was done, in words."""
    saved = torch.load(state_path, map_location="cpu", weights_only=True)
    states = saved.get("optimizer_states") or []
    if len(states) != 1:
        return f"optimizer state not carried over: {state_path} holds {len(states)} optimizers"
    state = states[0]
    groups = optimizer.param_groups
    shapes = [[tuple(p.shape) for p in g["params"]] for g in groups]
    saved_ids = [g["params"] for g in state["param_groups"]]
    if [len(ids) for ids in saved_ids] != [len(s) for s in shapes]:
        return "optimizer state not carried over: the parameter groups differ (architecture)"
    for ids, group_shapes in zip(saved_ids, shapes, strict=True):
        for index, shape in zip(ids, group_shapes, strict=True):
            moment = state["state"].get(index, {}).get("exp_avg")
            if moment is not None and tuple(moment.shape) != shape:
                return "optimizer state not carried over: parameter shapes differ (architecture)"
    mine = [{k: v for k, v in g.items() if k != "params"} for g in groups]
    optimizer.load_state_dict(state)
    for group, settings in zip(optimizer.param_groups, mine, strict=True):
        group.update(settings)  # this run's lr, betas and weight decay
        group.pop("initial_lr", None)  # the scheduler sets its own base from lr
    return f"optimizer state carried over from {state_path}"


def param_groups(model: GPT, train: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: matrices decay (embeddings as configured); biases and norms do not."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for param in model.parameters():  # a tied weight appears once
        if not param.requires_grad:
            continue
        is_matrix = param.dim() >= 2
        if is_matrix and (train.decay_embeddings or id(param) not in embeddings):
            decay.append(param)
        else:
            no_decay.append(param)
    return [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class LitGPT(pl.LightningModule):
    def __init__(
        self,
        gpt_config: GPTConfig,
        train: TrainConfig,
        bytes_per_token_val: float | None = None,
        print_progress: Callable[[int, str], None] | None = None,
    ):
        super().__init__()
        self.model = GPT(gpt_config)
        self.train_config = train
        self.bytes_per_token_val = bytes_per_token_val
        self.print_progress = print_progress  # (step, text) -> None; rank 0 only
        # Set before fit to resume: the checkpoint folder whose safetensors hold the weights.
        self.resume_weights_dir = None
        # Set before fit when training continues from an earlier run's weights: its
        # trainer_state.ckpt (optimizer moments; None: a fresh optimizer) and the schedule kind.
        self.init_state_from: Path | None = None
        self.continuing = False
        self.last_train_loss: float | None = None
        self.last_val: dict[str, float] = {}
        self.last_val_step: int | None = None
        # [step, loss] pairs for the loss curve; kept in the checkpoint so a resumed run has all
        self.history: dict[str, list[list[float]]] = {"train": [], "val": []}
        self.skipped_steps: list[int] = []  # optimizer steps not applied (non-finite)
        self.checkpoint_weights: dict[str, torch.Tensor] | None = None  # see on_save_checkpoint
        self.peak_flops: float | None = None  # per device, for MFU (set by the launcher)
        self._micro_losses: list[torch.Tensor] = []
        self._grad_norm: torch.Tensor | None = None
        self._bad_in_row = 0
        self._last_step_seen = -1
        self._last_log: tuple[int, float] | None = None  # (step, time) of the last log line
        # tokens/s between log lines: their median is the steady speed, without the compile,
        # validation and checkpoint pauses that the run's average includes
        self.logged_rates: list[float] = []
        self._compiled = False

    @property
    def tokens_per_step(self) -> int:
        """Tokens consumed by one optimizer step, over all devices."""
        t = self.train_config
        world = self.trainer.world_size if self._trainer is not None else 1
        return t.batch_size * t.grad_accum_steps * self.model.config.block_size * world

    def configure_model(self) -> None:
        # Compile the inner nn.Module, in place: compiling the LightningModule breaks on
        # self.log (probe-stack.md §4), and in-place keeps the state_dict keys free of _orig_mod.
        if self.train_config.compile and not self._compiled:
            mode = self.train_config.compile_mode
            self.model.compile(mode=None if mode == "default" else mode)
            self._compiled = True

    # ------------------------------------------------------------------------------ training

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int):
        # (x, y) windows of pretraining, or (x, y, segments) rows of packed fine-tuning examples
        x, y, *segments = batch
        _, loss = self.model(x, y, segment_ids=segments[0] if segments else None)
        self._micro_losses.append(loss.detach())
        return loss

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clip to grad_clip (the Trainer's gradient_clip_val), measure the norm, and drop the
        gradients of a step whose norm is not finite so that the optimizer skips it."""
        max_norm = float(gradient_clip_val) if gradient_clip_val else math.inf
        params = [p for group in optimizer.param_groups for p in group["params"]]
        wrapped = self.trainer.strategy.model
        if hasattr(wrapped, "clip_grad_norm_"):  # FSDP: the norm over all shards
            norm = wrapped.clip_grad_norm_(max_norm)
        elif math.isinf(max_norm):
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        self._grad_norm = norm.detach()
        # 16-mixed: the GradScaler skips overflowing steps itself, and lowers its scale.
        if self.trainer.precision == "16-mixed" or bool(torch.isfinite(norm)):
            self._bad_in_row = 0
            return
        for p in params:
            p.grad = None  # AdamW leaves a parameter without a gradient untouched
        step = self.trainer.global_step + 1
        self.skipped_steps.append(step)
        self._bad_in_row += 1
        if self.print_progress and self.trainer.is_global_zero:
            self.print_progress(
                step,
                f"non-finite gradient norm ({norm.item()}): step skipped "
                f"({self._bad_in_row} in a row, {len(self.skipped_steps)} in all)",
            )
        if self._bad_in_row >= self.train_config.max_bad_steps:
            raise NonFiniteLossError(
                f"{self._bad_in_row} optimizer steps in a row (the last at step {step}) had a "
                f"non-finite loss or gradient norm; stopping. Lower the learning rate or check "
                f"the data; the checkpoints written so far hold good weights"
            )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = self.trainer.global_step
        if step == self._last_step_seen:
            return  # a micro-batch of gradient accumulation: no optimizer step yet
        self._last_step_seen = step
        step_loss = torch.stack(self._micro_losses).mean()
        self._micro_losses.clear()
        t = self.train_config
        if self.trainer.progress_bar_callback is not None:  # only the bar reads it, every step
            self.log("train_loss", step_loss, prog_bar=True, logger=False)
        if step % t.log_every_steps and step < t.max_steps:
            return
        self._log_train_step(step, step_loss)

    def _log_train_step(self, step: int, loss: torch.Tensor) -> None:
        t = self.train_config
        if self.trainer.world_size > 1:  # every rank logs at the same steps: all take part
            loss = self.trainer.strategy.reduce(loss, reduce_op="mean")
        self.last_train_loss = loss.item()  # a device sync: only on logging steps
        now = time.perf_counter()
        self.history["train"].append([step, self.last_train_loss])
        metrics = {
            "train_loss": self.last_train_loss,
            "lr": t.learning_rate * lr_factor(step - 1, t, self.continuing),
            "tokens_seen": float(step * self.tokens_per_step),
        }
        if self._grad_norm is not None:
            metrics["grad_norm"] = self._grad_norm.item()
        if self._last_log is not None and step > self._last_log[0]:
            seconds = max(now - self._last_log[1], 1e-9)
            rate = (step - self._last_log[0]) * self.tokens_per_step / seconds
            metrics["tokens_per_second"] = rate
            self.logged_rates.append(rate)
            if self.peak_flops:
                per_device = rate / self.trainer.world_size
                metrics["mfu"] = per_device * self.model.flops_per_token() / self.peak_flops
        self._last_log = (step, now)
        for logger in self.loggers:
            logger.log_metrics(metrics, step=step)
        if self.print_progress and self.trainer.is_global_zero:
            parts = [f"train_loss {metrics['train_loss']:.4f}", f"lr {metrics['lr']:.2e}"]
            if "grad_norm" in metrics:
                parts.append(f"grad_norm {metrics['grad_norm']:.3f}")
            if "tokens_per_second" in metrics:
                parts.append(f"{metrics['tokens_per_second']:,.0f} tok/s")
            if "mfu" in metrics:
                parts.append(f"mfu {100 * metrics['mfu']:.1f}%")
            self.print_progress(step, " | ".join(parts))

    def on_train_start(self) -> None:
        self._last_step_seen = self.trainer.global_step
        self._last_log = (self.trainer.global_step, time.perf_counter())

    # ---------------------------------------------------------------------------- validation

    def on_validation_epoch_start(self) -> None:
        self._val_nats = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_tokens = torch.zeros((), dtype=torch.float64, device=self.device)

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        x, y, *segments = batch
        _, loss = self.model(x, y, segment_ids=segments[0] if segments else None)
        scored = (y != IGNORE_INDEX).sum()  # fine-tuning scores response tokens only
        if scored:
            self._val_nats += loss.double() * scored
            self._val_tokens += scored

    def on_validation_epoch_end(self) -> None:
        nats = self.trainer.strategy.reduce(self._val_nats, reduce_op="sum")
        tokens = self.trainer.strategy.reduce(self._val_tokens, reduce_op="sum")
        val_loss = (nats / tokens).item()
        metrics = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
        if self.bytes_per_token_val:
            metrics["val_bpb"] = val_loss / math.log(2) / self.bytes_per_token_val
        self.log("val_loss", val_loss, prog_bar=True, logger=False)
        self.last_val = metrics
        self.last_val_step = self.trainer.global_step
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.last_val_step)
        if not self.history["val"] or self.history["val"][-1][0] != self.last_val_step:
            self.history["val"].append([self.last_val_step, val_loss])
        if self.print_progress and self.trainer.is_global_zero:
            text = " | ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            self.print_progress(self.last_val_step, text)

    # ----------------------------------------------------------------------------- optimizer

    def configure_optimizers(self) -> dict[str, Any]:
        t = self.train_config
        optimizer = torch.optim.AdamW(
            param_groups(self.model, t),
            lr=t.learning_rate,
            betas=(t.beta1, t.beta2),
            fused=self.device.type == "cuda",  # one kernel for all parameters
        )

        if self.init_state_from is not None and self.resume_weights_dir is None:
            done = carry_optimizer_state(optimizer, Path(self.init_state_from))
            if self.trainer.is_global_zero:
                print(done, flush=True)
        continuing = self.continuing

        def schedule(step: int) -> float:  # a plain function: LambdaLR keeps it out of its state
            return lr_factor(step, t, continuing)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # ---------------------------------------------------------------------------- checkpoint

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The weights go to model.safetensors beside the .ckpt (StepCheckpoint writes them from
        # checkpoint_weights), never into the pickle-based .ckpt. Lightning's state_dict is the
        # full one on rank 0 under every strategy (FSDP gathers it), hence taken from here.
        state = checkpoint.pop("state_dict", None) or {}
        self.checkpoint_weights = {k.removeprefix("model."): v for k, v in state.items()}
        checkpoint["loss_history"] = self.history
        checkpoint["skipped_steps"] = list(self.skipped_steps)
        # keep the RNG so dropout continues as it would have
        checkpoint["torch_rng_state"] = torch.get_rng_state()
        if torch.cuda.is_available():
            checkpoint["cuda_rng_states"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.resume_weights_dir is None:
            raise RuntimeError("resuming needs LitGPT.resume_weights_dir (the safetensors folder)")
        # Lightning's strategy loads checkpoint["state_dict"] next (strict): hand it the weights.
        tensors = load_state_dict(self.resume_weights_dir, self.model.config)
        checkpoint["state_dict"] = {f"model.{k}": v for k, v in tensors.items()}
        self.history = checkpoint.get("loss_history", self.history)
        self.skipped_steps = list(checkpoint.get("skipped_steps", []))
        if "torch_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng_state"])
        if "cuda_rng_states" in checkpoint and torch.cuda.is_available():
            states = checkpoint["cuda_rng_states"]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)
