"""A sweep's comparison: one row per variant (its seeds folded into mean and spread), a
markdown table, a plot, and how many times each stage really ran.

In: for each variant run (`pipeline.sweep.Variant`, one per seed) the summary of its pipeline
run (`flows.pipeline.pipeline_flow`'s return value: each stage's result and whether it was
cached), and the metric variants are ranked by. Out: `run_row` (one training run: documents
kept after each data stage, tokens, eval metrics), `compare` (one row per variant: mean and
sample standard deviation over seeds), `comparison_markdown`, `sweep_plot` (PNG) and
`stage_executions` (stage -> how many runs executed it instead of reusing its output).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from pipeline.sweep import Variant

# The count of documents that got through each data stage (Stage.passed_count, or `kept`).
KEPT = {
    "ingest": "documents",
    "clean": "kept",
    "dedup": "kept",
    "decontaminate": "kept",
    "quality": "kept",
}
# Eval numbers that are bookkeeping, not quality.
SKIPPED_SUFFIXES = ("_stderr", "_examples", "_evaluated", "_seconds", "_count", "_tokens")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(float(value)) else None


def run_row(variant: Variant, summary: dict[str, Any]) -> dict[str, Any]:
    """One training run of the sweep: what it kept, what it trained on, how it scored."""
    stages = summary["stages"]
    row: dict[str, Any] = {
        "variant": variant.name,
        "overrides": " ".join(variant.overrides) or "(config as is)",
        "seed": variant.seed,
    }
    for stage, key in KEPT.items():
        if stage in stages:
            row[f"{stage}_kept"] = (stages[stage].get("counts") or {}).get(key)
    shards = stages.get("shards") or {}
    found = {**(shards.get("stats") or {}), **(shards.get("counts") or {})}
    row["data_tokens"] = found.get("train_tokens")
    row["tokens_trained"] = ((stages.get("pretrain") or {}).get("metrics") or {}).get("tokens_seen")
    for name, value in ((stages.get("evaluate") or {}).get("metrics") or {}).items():
        if _number(value) is not None and not name.endswith(SKIPPED_SUFFIXES):
            row[name] = value
    row["mlflow_run_id"] = summary.get("mlflow_run_id")
    return row


def compare(rows: list[dict[str, Any]], metric: str, mode: str = "min") -> list[dict[str, Any]]:
    """One row per variant: counts as they are (seeds share the data), each eval metric as the
    mean over seeds with `<metric>_std` (sample standard deviation; 0 with one seed), the
    ranking metric first. Sorted best first (`mode`: min or max)."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    table = []
    for name, runs in by_variant.items():
        first = runs[0]
        out: dict[str, Any] = {"variant": name, "overrides": first["overrides"], "seeds": len(runs)}
        data_keys = [
            k for k in first if k.endswith("_kept") or k in ("data_tokens", "tokens_trained")
        ]
        out.update({k: first[k] for k in data_keys})
        metric_keys = [metric] + [
            k for k in first if k not in out and k not in (metric, "seed", "mlflow_run_id")
        ]
        for key in metric_keys:
            values = [_number(r.get(key)) for r in runs]
            values = [v for v in values if v is not None]
            if not values:
                continue
            out[key] = round(statistics.fmean(values), 4)
            out[f"{key}_std"] = round(statistics.stdev(values), 4) if len(values) > 1 else 0.0
        table.append(out)
    missing = [row["variant"] for row in table if metric not in row]
    if missing:
        raise ValueError(f"sweep: no {metric!r} in the evaluation of {', '.join(missing)}")
    table.sort(key=lambda r: r[metric], reverse=(mode == "max"))
    return table


def winner_line(table: list[dict[str, Any]], metric: str) -> str:
    """`X won: text_bpb 1.83 vs 1.90 (Y), 0.07 lower; seed spread up to 0.01`."""
    if len(table) < 2:
        return ""
    best, second = table[0], table[1]
    gap = abs(best[metric] - second[metric])
    spread = max(r.get(f"{metric}_std", 0.0) for r in table)
    direction = "lower" if best[metric] <= second[metric] else "higher"
    share = gap / abs(second[metric]) * 100 if second[metric] else 0.0
    text = (
        f"**{best['variant']}** won on {metric}: {best[metric]:.4f} vs {second[metric]:.4f} "
        f"({second['variant']}), {gap:.4f} ({share:.2f}%) {direction}"
    )
    if max(r["seeds"] for r in table) > 1:
        verdict = "larger" if gap > 2 * spread else "not larger"
        text += f"; seed spread (std) up to {spread:.4f}: the gap is {verdict} than twice the noise"
    return text + "."


# In the markdown table (MLflow's and Prefect's tables have every column): no numbers that
# restate another (loss and perplexities beside bits per byte), no bookkeeping.
HIDDEN_SUFFIXES = ("_bytes", "_loss", "_ppl", "_word_ppl", "_contaminated_fraction")
HIDDEN = {"num_params", "val_loss", "val_ppl"}


def _shown(column: str) -> bool:
    return column not in HIDDEN and not column.endswith(HIDDEN_SUFFIXES)


def comparison_markdown(
    table: list[dict[str, Any]], metric: str, executions: dict[str, int], runs: int
) -> str:
    """The sweep's card: the table (mean ± std over seeds), the winner, and stage reuse."""
    found = [c for row in table for c in row if not c.endswith("_std")]
    data = ["variant", "overrides", "seeds", *(f"{s}_kept" for s in KEPT), "data_tokens",
            "tokens_trained", metric]  # fmt: skip
    columns = [c for c in data if c in found]
    columns += sorted({c for c in found if c not in columns and _shown(c)})

    def cell(row: dict[str, Any], key: str) -> str:
        value = row.get(key)
        if value is None:
            return ""
        if isinstance(value, float) and f"{key}_std" in row:
            spread = row[f"{key}_std"]
            return f"{value:.4f} ± {spread:.4f}" if row.get("seeds", 1) > 1 else f"{value:.4f}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return str(value).replace("|", "\\|")

    lines = [
        f"## Sweep: {len(table)} variants, ranked by `{metric}`",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(cell(row, c) for c in columns) + " |" for row in table]
    lines += ["", winner_line(table, metric), ""]
    reuse = ", ".join(f"{stage} {count}x" for stage, count in executions.items())
    lines.append(
        f"Stages executed over the sweep's {runs} pipeline runs (the rest reused): {reuse}."
    )
    return "\n".join(lines)


def sweep_plot(table: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """A bar per variant: the metric's mean over seeds with its spread, and the documents the
    variant trained on under each bar's name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["variant"] for row in table]
    means = [row[metric] for row in table]
    spreads = [row.get(f"{metric}_std", 0.0) for row in table]
    kept = [
        next((row[k] for k in reversed(list(row)) if k.endswith("_kept") and row[k] is not None), None)
        for row in table
    ]  # fmt: skip
    labels = [f"{n}\n{k:,} docs" if k is not None else n for n, k in zip(names, kept, strict=True)]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(table)), 3.6))
    bars = ax.bar(range(len(table)), means, yerr=spreads, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(table)), labels, fontsize=8)
    ax.set_ylabel(metric)
    low, high = min(means) - max(spreads), max(means) + max(spreads)
    pad = (high - low) * 0.5 or abs(high) * 0.05 or 1.0
    ax.set_ylim(max(0.0, low - pad), high + pad)
    for bar, mean in zip(bars, means, strict=True):
        ax.annotate(f"{mean:.3f}", (bar.get_x() + bar.get_width() / 2, mean), ha="center",
                    va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")  # fmt: skip
    seeds = max(row["seeds"] for row in table)
    ax.set_title(
        f"{metric} per variant" + (f" (mean ± std over {seeds} seeds)" if seeds > 1 else "")
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def stage_executions(summaries: list[dict[str, Any]]) -> dict[str, int]:
    """Stage -> how many of the sweep's pipeline runs executed it (not cached): a stage the
    variants share runs once, however many variants read it."""
    counts: dict[str, int] = {}
    for summary in summaries:
        for stage, result in summary["stages"].items():
            counts[stage] = counts.get(stage, 0) + (0 if result.get("cached") else 1)
    return counts


def text_chart(table: list[dict[str, Any]], metric: str, width: int = 30) -> str:
    """The plot as text, for a Prefect card (which shows no local images): a bar per variant,
    its length from the worst value to the best (a zero-based bar hides small gaps)."""
    values = [row[metric] for row in table]
    low, high = min(values), max(values)
    name_width = max(len(row["variant"]) for row in table)
    lines = ["```", f"{metric} (mean ± std over seeds)"]
    for row, value in zip(table, values, strict=True):
        share = 1.0 if high == low else 0.15 + 0.85 * (value - low) / (high - low)
        bar = "█" * max(1, round(share * width))
        spread = row.get(f"{metric}_std", 0.0)
        lines.append(f"{row['variant']:<{name_width}}  {bar:<{width}}  {value:.4f} ± {spread:.4f}")
    lines.append("```")
    return "\n".join(lines)
