"""What a training run shows while it runs and leaves behind: progress lines and a loss curve.

In: the running Trainer (progress) or the [step, loss] history of a run (plot).
Out: plain `step N/M | train_loss ... | tok/s` lines on stdout, flushed so a parent process can
stream them (used when stdout is not a terminal; a terminal gets Lightning's TQDM bar), and
`loss_curve.png`.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl


def _value(metrics: dict, name: str) -> float | None:
    value = metrics.get(name)
    return None if value is None else float(value)


class ProgressLines(pl.Callback):
    """Prints one line every `every_steps` optimizer steps and one after each validation."""

    def __init__(self, every_steps: int, max_steps: int):
        self.every_steps = every_steps
        self.max_steps = max_steps
        self._last_step = -1
        self._last_time = 0.0
        self._last_printed_step = 0

    def _print(self, trainer: pl.Trainer, text: str) -> None:
        if trainer.is_global_zero:
            print(f"step {trainer.global_step}/{self.max_steps} | {text}", flush=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = self._last_printed_step = trainer.global_step
        self._last_time = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step:
            return  # gradient accumulation: no optimizer step yet
        self._last_step = step
        if step % self.every_steps and step < self.max_steps:
            return
        now = time.perf_counter()
        steps = step - self._last_printed_step
        rate = steps * pl_module.tokens_per_step / max(now - self._last_time, 1e-9)
        self._last_time, self._last_printed_step = now, step
        metrics = trainer.callback_metrics
        parts = []
        loss = _value(metrics, "train_loss")
        if loss is not None:
            parts.append(f"train_loss {loss:.4f}")
        lr = _value(metrics, "lr")
        if lr is not None:
            parts.append(f"lr {lr:.2e}")
        parts.append(f"{rate:,.0f} tok/s")
        self._print(trainer, " | ".join(parts))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = getattr(pl_module, "last_val", {})
        self._print(trainer, " | ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


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
