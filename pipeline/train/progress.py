"""Training progress: the loss curve a run leaves behind, and the ticks a terminal bar follows.

In: the [step, loss] history of a run (LitGPT.history). Out: `loss_curve.png`.
(The `step N/M | train_loss ...` progress lines are printed by LitGPT itself.)
`ProgressTicks` prints `@progress N/M` lines for an orchestrator that draws the bar.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytorch_lightning as pl

from pipeline.train.ticks import tick_line


def plot_loss_curve(history: dict[str, list[list[float]]], path: Path, title: str = "") -> Path:
    """Train and val loss against optimizer step, saved as a PNG (no pyplot global state)."""
    from matplotlib.figure import Figure  # the Agg canvas is the default for savefig

    fig = Figure(figsize=(7, 4.2), dpi=100)
    ax = fig.subplots()
    for name, marker in (("train", None), ("val", "o")):
        points = history.get(name) or []
        if points:
            steps, losses = zip(*points, strict=True)
            ax.plot(steps, losses, marker=marker, label=f"{name} loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)
    return path


class ProgressTicks(pl.Callback):
    """Prints `@progress STEP/MAX_STEPS` after optimizer steps, at most every `every_seconds`
    (and always for the last step), on rank 0."""

    def __init__(self, total: int, every_seconds: float = 1.0, out=None):
        self.total = total
        self.every_seconds = every_seconds
        self.out = out
        self._last_time = 0.0
        self._last_step = -1

    def _emit(self, step: int) -> None:
        print(tick_line(step, self.total), file=self.out or sys.stdout, flush=True)
        self._last_time = time.monotonic()
        self._last_step = step

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self._emit(trainer.global_step)  # a resumed run starts part-way

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step == self._last_step:
            return
        if step >= self.total or time.monotonic() - self._last_time >= self.every_seconds:
            self._emit(step)
