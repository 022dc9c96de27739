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
    for section in ("counts", "stats", "metrics", "edits"):
        for key, value in flatten(manifest.get(section) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{key}"] = value
    # The stage's own wall time (a pipeline run's parent MLflow run has `pipeline_seconds`).
    out["stage_seconds"] = manifest.get("seconds", 0.0)
    return out


def eval_markdown(rows: list[dict[str, Any]]) -> str:
    """The evaluation table (task, metric, value +- stderr, examples), then each task's method."""
    lines = []
    for row in rows:
        value = "" if row.get("value") is None else _fmt(row["value"])
        if row.get("stderr") is not None:
            value += f" ± {row['stderr']:.3g}"
        examples = "" if row.get("examples") is None else _fmt(int(row["examples"]))
        lines.append((row["task"], row["metric"], value or row.get("note", ""), examples))
    methods = dict.fromkeys(f"- **{r['task']}**: {r['method']}" for r in rows if r.get("method"))
    return (
        before_after_markdown(rows)
        + _table(lines, ("task", "metric", "value", "examples"))
        + "\n\nMethods:\n"
        + "\n".join(methods)
    )


def before_after_markdown(rows: list[dict[str, Any]]) -> str:
    """After a fine-tune: each task metric of the starting model beside the fine-tuned one."""
    values = {(r["task"], r["metric"]): r.get("value") for r in rows}
    pairs = []
    for (task, metric), before in values.items():
        after = values.get((task.removeprefix("base_"), metric))
        if task.startswith("base_") and before is not None and after is not None:
            change = after - before
            pairs.append(
                (task.removeprefix("base_"), metric, _fmt(before), _fmt(after), f"{change:+.4g}")
            )
    if not pairs:
        return ""
    header = ("task", "metric", "before fine-tuning", "fine-tuned", "change")
    return "## Fine-tuning: before and after\n\n" + _table(pairs, header) + "\n\n"


def _cleaning_and_dedup_sections(manifest: dict[str, Any]) -> list[str]:
    """Clean's rule table and edits; dedup's near-dup examples, removed text beside kept text:
    what a person reads to judge a rule."""
    parts = []
    rules = manifest.get("rules") or []
    if rules:
        # Four short columns, so the table fits the Prefect UI's card; the family of each rule
        # is in MLflow's rules.json, and removed documents are under "Rejected examples".
        rows = [
            (
                rule["name"],
                f"{rule['signal']} {rule['keep_if']}",
                _fmt(rule["removed"]),
                _fmt(rule["failing"]),
            )
            for rule in rules
        ]
        header = ("rule", "keep if", "removed", "failing")
        parts.append(
            "## Rules, in the order tried\n\n"
            "`failing`: documents the rule alone would reject; `removed`: those it rejected "
            "first.\n\n" + _table(rows, header)
        )
    edits = manifest.get("edits") or {}
    if edits:
        rows = [(name, _fmt(n)) for name, n in edits.items()]
        parts.append("## Edits\n\n" + _table(rows, ("edit", "count")))
    near = (manifest.get("near_duplicates") or {}).get("examples") or []
    if near:
        rows = [(e["removed"][:150], e["kept"][:150]) for e in near]
        parts.append("## Near duplicates\n\n" + _table(rows, ("removed", "kept")))
    return parts


def stage_markdown(stage: str, manifest: dict[str, Any]) -> str:
    reused = " (reused: output already complete)" if manifest.get("reused") else ""
    parts = [
        f"# {stage}{reused}",
        f"Output `{manifest.get('fingerprint')}`, {manifest.get('seconds', 0):.1f} s.",
    ]
    numbers = stage_metrics(manifest)
    numbers.pop("stage_seconds", None)
    evaluation = manifest.get("eval_table") or []
    if evaluation:
        parts.append(eval_markdown(evaluation))
    elif numbers:
        parts.append(_table([(k, _fmt(v)) for k, v in numbers.items()], ("measure", "value")))
    registered = manifest.get("registered")
    if registered:
        parts.append(
            f"Registered **{registered['model_name']}** version **{registered['version']}** "
            f"({registered['metric']} = {registered['value']:.4f}); "
            + ("promoted to `@champion`" if registered["promoted"] else "kept as `@challenger`")
            + (f": {registered['reason']}." if registered.get("reason") else ".")
        )
    counts = manifest.get("counts") or {}
    by_source = counts.get("by_source") or {}
    if by_source and isinstance(next(iter(by_source.values())), dict):
        rows = [
            (name, _fmt(c.get("documents", 0)), _fmt(c.get("quarantined", 0)), c.get("files", ""))
            for name, c in by_source.items()
        ]
        parts.append(
            "## Sources\n\n" + _table(rows, ("source", "documents", "quarantined", "files"))
        )
    for title, key in (
        ("Refused, by reason", "quarantined_by_reason"),
        ("Repaired", "repaired_by_reason"),
    ):
        if counts.get(key):
            rows = [(reason, _fmt(n)) for reason, n in counts[key].items()]
            parts.append(f"## {title}\n\n" + _table(rows, ("reason", "count")))
    languages = counts.get("languages") or {}
    if languages:
        top = sorted(languages.items(), key=lambda kv: -kv[1])[:15]
        total = sum(languages.values()) or 1
        rows = [(lang, _fmt(n), f"{n / total:.1%}") for lang, n in top]
        parts.append("## Languages\n\n" + _table(rows, ("language", "documents", "share")))
    for title, key in (("Examples", "examples"), ("Generations", "generations")):
        rows = manifest.get(key) or []
        if rows:
            header = tuple(rows[0].keys())
            parts.append(f"## {title}\n\n" + _table([tuple(r.values()) for r in rows], header))
    parts.extend(_cleaning_and_dedup_sections(manifest))
    rejected = manifest.get("examples_rejected") or {}
    if rejected:
        lines = ["## Rejected examples"]
        for rule, docs in rejected.items():
            for doc in docs[:2]:
                lines.append(f"- **{rule}**: {str(doc.get('text', ''))[:200]!r}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
