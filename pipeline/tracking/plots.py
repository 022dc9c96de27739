"""Plots for a pipeline run's MLflow page: the evaluation summary beside the loss curve.

In: a flat dict of eval metrics (`val_bpb`, `wikitext2_ppl`, ...), optionally a baseline's
(the current champion's) and standard errors. Out: a PNG with one small panel per metric, this
run's value beside the baseline's, so a reader sees at a glance whether the new model wins.
(The loss curve is drawn by the trainer: `pipeline.train.progress.plot_loss_curve`.)
"""

from __future__ import annotations

import math
from pathlib import Path

# Bookkeeping numbers that are not quality measures.
NOT_QUALITY = {"num_params", "seconds", "examples", "tokens", "documents"}
BOOKKEEPING_SUFFIXES = ("_examples", "_seconds", "_stderr", "_count", "_evaluated", "_tokens")
MAX_PANELS = 12


def _quality_metrics(metrics: dict[str, float]) -> dict[str, float]:
    out = {}
    for name, value in metrics.items():
        if name in NOT_QUALITY or name.endswith(BOOKKEEPING_SUFFIXES):
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(float(value)):
                out[name] = float(value)
    return dict(list(out.items())[:MAX_PANELS])


def eval_summary_plot(
    metrics: dict[str, float],
    path: Path,
    title: str = "",
    baseline: dict[str, float] | None = None,
    baseline_label: str = "champion",
    stderr: dict[str, float] | None = None,
    label: str = "this run",
) -> Path | None:
    """One bar panel per metric (this run vs the baseline); None when there is nothing to draw."""
    from matplotlib.figure import Figure  # Agg canvas; no pyplot global state

    shown = _quality_metrics(metrics)
    if not shown:
        return None
    baseline = baseline or {}
    stderr = stderr or {}
    columns = min(4, len(shown))
    rows = math.ceil(len(shown) / columns)
    fig = Figure(figsize=(3.0 * columns, 2.6 * rows + 0.6), dpi=100)
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, (name, value) in zip(axes.flat, shown.items(), strict=False):
        labels, values, errors, colors = [label], [value], [stderr.get(name, 0.0)], ["#1f77b4"]
        other = baseline.get(name)
        if other is not None and math.isfinite(float(other)):
            labels.append(baseline_label)
            values.append(float(other))
            errors.append(0.0)
            colors.append("#aaaaaa")
        bars = ax.bar(labels, values, width=0.6, color=colors, yerr=errors if any(errors) else None)
        ax.set_xlim(-0.6, 1.6)  # two slots always, so a lone bar keeps its width
        for bar, number in zip(bars, values, strict=True):
            ax.annotate(
                f"{number:.4g}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_title(name, fontsize=10)
        ax.tick_params(labelsize=8)
        ax.margins(y=0.2)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(shown) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
