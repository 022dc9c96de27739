"""Step checkpoints of a pretraining run, and finding the one to resume from.

In: the running Trainer and LightningModule (saving), or a checkpoints folder (resuming).
Out: `<out_dir>/checkpoints/step-NNNNNN/` folders, each holding
  - model.safetensors + model_config.json: the weights (pipeline.model.checkpoint.save_model);
  - trainer_state.ckpt: everything else Lightning needs to resume (optimizer and scheduler
    state, loop positions, callback state, RNG), written by `Trainer.save_checkpoint` with the
    weights taken out (LitGPT.on_save_checkpoint), and read back with `weights_only=True`.

and `<out_dir>/checkpoints/best/` (model files + best.json with its step and val_loss): the
weights of the lowest validation loss so far (LoRA adapters merged in: a plain model folder).

A checkpoint is written into a hidden temporary folder and renamed into place, so a folder named
step-NNNNNN is always complete; leftovers of a killed writer are removed on the next start.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn

from pipeline.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, save_state_dict
from pipeline.model.lora import merged_state_dict

TRAINER_STATE_FILE = "trainer_state.ckpt"
BEST_FOLDER = "best"
_STEP_FOLDER = re.compile(r"^step-(\d{6,})$")
_TMP_PREFIX = ".tmp-"


def step_folder_name(step: int) -> str:
    return f"step-{step:06d}"


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        match = _STEP_FOLDER.match(folder.name)
        if match and all(
            (folder / f).is_file() for f in (WEIGHTS_FILE, CONFIG_FILE, TRAINER_STATE_FILE)
        ):
            found.append((int(match.group(1)), folder))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1][1] if found else None


def remove_incomplete(root: Path) -> list[Path]:
    """Delete temporary folders left by a writer that died mid-checkpoint; returns them."""
    root = Path(root)
    removed = [p for p in root.glob(f"{_TMP_PREFIX}*") if p.is_dir()] if root.is_dir() else []
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def prune_checkpoints(root: Path, keep_last: int) -> None:
    for _, folder in complete_checkpoints(root)[:-keep_last]:
        shutil.rmtree(folder, ignore_errors=True)


class StepCheckpoint(pl.Callback):
    """Saves a checkpoint every `every_steps` optimizer steps and at `max_steps`, keeps the last
    `keep_last`, and (with `keep_best`) the weights of the lowest val_loss in `root/best/`.

    A checkpoint due at a step that also validates is written after the validation, so that it
    holds that validation's results (loss history, best so far) and a resumed run has them.
    """

    def __init__(
        self,
        root: Path,
        every_steps: int,
        keep_last: int,
        max_steps: int,
        val_every_steps: int | None = None,
        keep_best: bool = False,
    ):
        self.root = Path(root)
        self.every_steps = every_steps
        self.keep_last = keep_last
        self.max_steps = max_steps
        self.val_every_steps = val_every_steps
        self.keep_best = keep_best
        self.best_val_loss: float | None = None
        self.best_step: int | None = None
        self.last_saved: Path | None = None
        self._last_step_seen = -1
        self._pending_step: int | None = None

    # the best score travels in the trainer state, so a resumed run keeps comparing against it
    def state_dict(self) -> dict[str, Any]:
        return {"best_val_loss": self.best_val_loss, "best_step": self.best_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_val_loss = state_dict.get("best_val_loss")
        self.best_step = state_dict.get("best_step")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step_seen = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step_seen:  # a micro-batch of gradient accumulation
            return
        self._last_step_seen = step
        if step % self.every_steps and step < self.max_steps:
            return
        if self.val_every_steps and step % self.val_every_steps == 0:
            self._pending_step = step  # validation runs right after this batch: save after it
            return
        self.save(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        step = trainer.global_step
        val_loss = getattr(pl_module, "last_val", {}).get("val_loss")
        if self.keep_best and val_loss is not None and math.isfinite(val_loss):
            if self.best_val_loss is None or val_loss < self.best_val_loss:
                self.best_val_loss, self.best_step = val_loss, step
                self.save_best(trainer, pl_module)
        if self._pending_step == step:
            self._pending_step = None
            self.save(trainer, pl_module)

    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path:
        step = trainer.global_step
        final = self.root / step_folder_name(step)
        tmp = self.root / f"{_TMP_PREFIX}{final.name}"
        if trainer.is_global_zero:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        trainer.strategy.barrier("step_checkpoint_tmp")
        # Every rank takes part (sharded strategies gather here); rank 0 writes. The weights
        # reach us through LitGPT.on_save_checkpoint (checkpoint_weights).
        trainer.save_checkpoint(tmp / TRAINER_STATE_FILE, weights_only=False)  # full state
        if trainer.is_global_zero:
            save_state_dict(pl_module.checkpoint_weights, pl_module.model.config, tmp)
            if final.exists():  # the same step saved again (e.g. a rerun of a finished run)
                shutil.rmtree(final)
            tmp.rename(final)
            prune_checkpoints(self.root, self.keep_last)
        pl_module.checkpoint_weights = None
        trainer.strategy.barrier("step_checkpoint_done")
        self.last_saved = final
        return final

    def save_best(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path:
        """Weights and model config of the best validation so far, in root/best/ (+ best.json)."""
        best = self.root / BEST_FOLDER
        tmp = self.root / f"{_TMP_PREFIX}{BEST_FOLDER}"
        state = trainer.strategy.lightning_module_state_dict()  # every rank: FSDP gathers
        if trainer.is_global_zero:
            shutil.rmtree(tmp, ignore_errors=True)
            weights = {k.removeprefix("model."): v for k, v in state.items()}
            weights = merged_state_dict(pl_module.model, weights)  # LoRA: a plain model folder
            save_state_dict(weights, pl_module.model.config, tmp)
            info = {"step": self.best_step, "val_loss": self.best_val_loss}
            (tmp / "best.json").write_text(json.dumps(info) + "\n", encoding="utf-8")
            old = self.root / f"{_TMP_PREFIX}old-{BEST_FOLDER}"
            shutil.rmtree(old, ignore_errors=True)
            if best.exists():
                best.rename(old)
            tmp.rename(best)
            shutil.rmtree(old, ignore_errors=True)
        trainer.strategy.barrier("best_checkpoint_done")
        return best
