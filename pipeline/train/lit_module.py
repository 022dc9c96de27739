"""The LightningModule that pretrains a GPT on next-token prediction.

In: a `GPTConfig`, the `TrainConfig` (optimizer, schedule, compile) and, for bits per byte, the
val split's mean bytes per token.
Out: `LitGPT`, whose `model` attribute is the plain `GPT` (what gets saved and exported). It
sends train_loss, lr and tokens_seen to the loggers every log_every_steps optimizer steps, and
val_loss, val_ppl and val_bpb after each validation, with the optimizer step count as the step;
`history` keeps the same [step, loss] pairs for the loss curve.

The optimizer is AdamW with weight decay on matrices only (embeddings and linear weights; biases
and LayerNorm are not decayed); the learning rate warms up linearly, then follows a cosine to
min_lr at max_steps, as nanoGPT's get_lr, through a LambdaLR stepped once per optimizer step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from pipeline.config import TrainConfig
from pipeline.model.checkpoint import load_weights
from pipeline.model.gpt import GPT, GPTConfig


def lr_factor(step: int, train: TrainConfig) -> float:
    """Learning rate at optimizer step `step`, as a fraction of train.learning_rate."""
    if step < train.warmup_steps:
        lr = train.learning_rate * (step + 1) / (train.warmup_steps + 1)
    elif step >= train.max_steps:
        lr = train.min_lr
    else:
        progress = (step - train.warmup_steps) / max(1, train.max_steps - train.warmup_steps)
        lr = train.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (
            train.learning_rate - train.min_lr
        )
    return lr / train.learning_rate


class LitGPT(pl.LightningModule):
    def __init__(
        self, gpt_config: GPTConfig, train: TrainConfig, bytes_per_token_val: float | None = None
    ):
        super().__init__()
        self.model = GPT(gpt_config)
        self.train_config = train
        self.bytes_per_token_val = bytes_per_token_val
        # Set before fit to resume: the checkpoint folder whose safetensors hold the weights.
        self.resume_weights_dir: Path | None = None
        self.last_train_loss: float | None = None
        self.last_val: dict[str, float] = {}
        self.last_val_step: int | None = None
        # [step, loss] pairs for the loss curve; kept in the checkpoint so a resumed run has all
        self.history: dict[str, list[list[float]]] = {"train": [], "val": []}
        self._micro_losses: list[torch.Tensor] = []
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
            self.model.compile()
            self._compiled = True

    # ------------------------------------------------------------------------------ training

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        _, loss = self.model(x, y)
        self._micro_losses.append(loss.detach())
        if len(self._micro_losses) == self.train_config.grad_accum_steps:
            # The last micro-batch of an optimizer step: log here, so the callbacks' batch-end
            # hooks (which run before the module's) already see this step's values.
            self._log_train_step(torch.stack(self._micro_losses).mean())
            self._micro_losses.clear()
        return loss

    def _log_train_step(self, loss: torch.Tensor) -> None:
        t = self.train_config
        step = self.trainer.global_step + 1  # the optimizer step this batch completes
        lr = t.learning_rate * lr_factor(step - 1, t)
        # self.log feeds the progress bar and callback_metrics; the loggers get the values
        # directly below, so the step they record is the optimizer step count (Lightning's own
        # logger step is zero-based and lags the checkpoint names by one).
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True, logger=False)
        self.log("lr", lr, on_step=True, on_epoch=False, logger=False)
        if step % self.trainer.log_every_n_steps == 0 or step >= t.max_steps:
            self.last_train_loss = loss.item()  # a device sync: only on logging steps
            self.history["train"].append([step, self.last_train_loss])
            metrics = {
                "train_loss": self.last_train_loss,
                "lr": lr,
                "tokens_seen": float(step * self.tokens_per_step),
            }
            for logger in self.loggers:
                logger.log_metrics(metrics, step=step)

    # ---------------------------------------------------------------------------- validation

    def on_validation_epoch_start(self) -> None:
        self._val_nats = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_tokens = torch.zeros((), dtype=torch.float64, device=self.device)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        _, loss = self.model(x, y)
        self._val_nats += loss.double() * y.numel()
        self._val_tokens += y.numel()

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
        self.history["val"].append([self.last_val_step, val_loss])

    # ----------------------------------------------------------------------------- optimizer

    def configure_optimizers(self) -> dict[str, Any]:
        t = self.train_config
        params = [p for p in self.model.parameters() if p.requires_grad]  # a tied weight once
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": t.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=t.learning_rate,
            betas=(t.beta1, t.beta2),
        )

        def schedule(step: int) -> float:  # a plain function: LambdaLR keeps it out of its state
            return lr_factor(step, t)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # ---------------------------------------------------------------------------- checkpoint

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The weights go to model.safetensors beside this file (StepCheckpoint), not into the
        # pickle-based .ckpt; keep the RNG so dropout continues as it would have.
        checkpoint.pop("state_dict", None)
        checkpoint["loss_history"] = self.history
        checkpoint["torch_rng_state"] = torch.get_rng_state()
        if torch.cuda.is_available():
            checkpoint["cuda_rng_states"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.resume_weights_dir is None:
            raise RuntimeError("resuming needs LitGPT.resume_weights_dir (the safetensors folder)")
        load_weights(self.model, self.resume_weights_dir)
        # Lightning loads checkpoint["state_dict"] next: hand it the weights just loaded.
        checkpoint["state_dict"] = self.state_dict()
        self.history = checkpoint.get("loss_history", self.history)
        if "torch_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng_state"])
        if "cuda_rng_states" in checkpoint and torch.cuda.is_available():
            states = checkpoint["cuda_rng_states"]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)
