"""Human-readable summaries of stage manifests: markdown for the Prefect UI, rows for tables.

In: a stage name and its manifest. Out: a markdown string (counts, rejection reasons, metrics,
examples) and flat numeric metrics for MLflow. No orchestrator imports here.
"""

from __future__ import annotations

from typing import Any

from pipeline.tracking.runs import flatten


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(c).replace("|", "\\|").replace("\n", " ") for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def stage_metrics(manifest: dict[str, Any]) -> dict[str, float]:
    """Numeric counts, stats and metrics of a manifest, flattened for MLflow."""
    out = {}
    for section in ("counts", "stats", "metrics"):
        for key, value in flatten(manifest.get(section) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{key}"] = value
    out["seconds"] = manifest.get("seconds", 0.0)
    return out


def stage_markdown(stage: str, manifest: dict[str, Any]) -> str:
    reused = " (reused: output already complete)" if manifest.get("reused") else ""
    parts = [
        f"# {stage}{reused}",
        f"Output `{manifest.get('fingerprint')}`, {manifest.get('seconds', 0):.1f} s.",
    ]
    numbers = stage_metrics(manifest)
    numbers.pop("seconds", None)
    if numbers:
        parts.append(_table([(k, _fmt(v)) for k, v in numbers.items()], ("measure", "value")))
    registered = manifest.get("registered")
    if registered:
        parts.append(
            f"Registered **{registered['model_name']}** version **{registered['version']}** "
            f"({registered['metric']} = {registered['value']:.4f}); "
            + (
                "promoted to `@champion`."
                if registered["promoted"]
                else f"kept as `@challenger` (champion v{registered['previous_champion']} has "
                f"{registered['previous_champion_metric']:.4f})."
            )
        )
    for title, key in (("Examples", "examples"), ("Generations", "generations")):
        rows = manifest.get(key) or []
        if rows:
            header = tuple(rows[0].keys())
            parts.append(f"## {title}\n\n" + _table([tuple(r.values()) for r in rows], header))
    rejected = manifest.get("examples_rejected") or {}
    if rejected:
        lines = ["## Rejected examples"]
        for rule, docs in rejected.items():
            for doc in docs[:2]:
                lines.append(f"- **{rule}**: {str(doc.get('text', ''))[:200]!r}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
