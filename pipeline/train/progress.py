"""What a training run leaves behind besides checkpoints: the loss curve.

In: the [step, loss] history of a run (LitGPT.history). Out: `loss_curve.png`.
(The `step N/M | train_loss ...` progress lines are printed by LitGPT itself.)
"""

from __future__ import annotations

from pathlib import Path


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
