"""Step checkpoints of a pretraining run, and finding the one to resume from.

In: the running Trainer and LightningModule (saving), or a checkpoints folder (resuming).
Out: `<out_dir>/checkpoints/step-NNNNNN/` folders, each holding
  - model.safetensors + model_config.json: the weights (pipeline.model.checkpoint.save_model);
  - trainer_state.ckpt: everything else Lightning needs to resume (optimizer and scheduler
    state, loop positions, callback state, RNG), written by `Trainer.save_checkpoint` with the
    weights taken out (LitGPT.on_save_checkpoint), and read back with `weights_only=True`.

A checkpoint is written into a hidden temporary folder and renamed into place, so a folder named
step-NNNNNN is always complete; leftovers of a killed writer are removed on the next start.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytorch_lightning as pl

from pipeline.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, save_model

TRAINER_STATE_FILE = "trainer_state.ckpt"
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
    """Saves a checkpoint every `every_steps` optimizer steps and at `max_steps`."""

    def __init__(self, root: Path, every_steps: int, keep_last: int, max_steps: int):
        self.root = Path(root)
        self.every_steps = every_steps
        self.keep_last = keep_last
        self.max_steps = max_steps
        self.last_saved: Path | None = None
        self._last_step_seen = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step_seen = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step_seen:  # a micro-batch of gradient accumulation
            return
        self._last_step_seen = step
        if step % self.every_steps == 0 or step >= self.max_steps:
            self.save(trainer, pl_module)

    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path:
        step = trainer.global_step
        final = self.root / step_folder_name(step)
        tmp = self.root / f"{_TMP_PREFIX}{final.name}"
        if trainer.is_global_zero:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        trainer.strategy.barrier("step_checkpoint_tmp")
        # Every rank takes part (sharded strategies gather here); rank 0 writes.
        trainer.save_checkpoint(tmp / TRAINER_STATE_FILE, weights_only=False)  # full state
        if trainer.is_global_zero:
            save_model(pl_module.model, tmp)
            if final.exists():  # the same step saved again (e.g. a rerun of a finished run)
                shutil.rmtree(final)
            tmp.rename(final)
            prune_checkpoints(self.root, self.keep_last)
        trainer.strategy.barrier("step_checkpoint_done")
        self.last_saved = final
        return final
