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
    marked = any("contamination" in row for row in rows)  # decontaminate ran
    for row in rows:
        value = "" if row.get("value") is None else _fmt(row["value"])
        if row.get("stderr") is not None:
            value += f" ± {row['stderr']:.3g}"
        examples = "" if row.get("examples") is None else _fmt(int(row["examples"]))
        line = (row["task"], row["metric"], value or row.get("note", ""), examples)
        lines.append(line + ((row.get("contamination", ""),) if marked else ()))
    methods = dict.fromkeys(f"- **{r['task']}**: {r['method']}" for r in rows if r.get("method"))
    header = ("task", "metric", "value", "examples") + (("contamination",) if marked else ())
    return (
        before_after_markdown(rows) + _table(lines, header) + "\n\nMethods:\n" + "\n".join(methods)
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


def _recipe_sections(manifest: dict[str, Any]) -> list[str]:
    """Decontamination's report per eval set, the quality classifier's measures, histogram and
    deciles, and the shards' source mixture."""
    parts = []
    contamination = manifest.get("contamination") or {}
    if contamination.get("sets"):
        rows = []
        for name, entry in contamination["sets"].items():
            if "absent" in entry:
                rows.append((name, "", "", "", "", f"not checked: {entry['absent']}"))
                continue
            rows.append(
                (
                    name,
                    _fmt(entry["examples"]),
                    _fmt(entry["too_short"]),
                    _fmt(entry["found"]),
                    f"{entry['found_fraction']:.2%}",
                    _fmt(entry["documents"]),
                )
            )
        header = ("eval set", "examples", "too short to check", "found in training data",
                  "share", "training documents touched")  # fmt: skip
        parts.append(
            f"## Contamination (action: {contamination.get('action')})\n\n" + _table(rows, header)
        )
    found = manifest.get("contamination_examples") or []
    if found:
        rows = [(e["set"], e["example_id"], e["action"], e["matching_words"][:150]) for e in found]
        parts.append(
            "## Matches\n\n" + _table(rows, ("eval set", "example", "action", "matching words"))
        )
    quality = manifest.get("quality") or {}
    if quality:
        trained = (quality.get("classifier") or {}).get("trained_on") or {}
        measures = (quality.get("classifier") or {}).get("heldout") or {}
        lines = [f"## Quality classifier\n\nRule: {quality.get('rule')}."]
        if measures:
            lines.append(
                f"Held out: accuracy {measures.get('accuracy', float('nan')):.3f}, AUC "
                f"{measures.get('auc', float('nan')):.3f} on {trained.get('heldout_positives')} "
                f"reference and {trained.get('heldout_negatives')} web documents."
            )
        parts.append("\n\n".join(lines))
        rows = [
            (f"{h['from']:.2f}-{h['to']:.2f}", _fmt(h["documents"])) for h in quality["histogram"]
        ]
        parts.append("## Score histogram\n\n" + _table(rows, ("quality_score", "documents")))
        rows = [
            (d["decile"], f"{d['score']:.3f}", d.get("source", ""), str(d.get("text", ""))[:150])
            for d in quality.get("deciles") or []
        ]
        parts.append(
            "## A document at each decile\n\n" + _table(rows, ("decile", "score", "source", "text"))
        )
    mixture = manifest.get("mixture") or {}
    if mixture.get("sources"):
        rows = [
            (
                name,
                _fmt(e["available_tokens"]),
                _fmt(e["target_tokens"]),
                _fmt(e["tokens"]),
                f"{e['share']:.2%}",
                f"{e['asked_share']:.2%}",
                f"{e['rate']:.3g}",
            )
            for name, e in mixture["sources"].items()
        ]
        header = ("source", "available tokens", "target", "written", "share", "asked", "rate")
        parts.append("## Source mixture (train split)\n\n" + _table(rows, header))
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
    parts.extend(_recipe_sections(manifest))
    rejected = manifest.get("examples_rejected") or {}
    if rejected:
        lines = ["## Rejected examples"]
        for rule, docs in rejected.items():
            for doc in docs[:2]:
                lines.append(f"- **{rule}**: {str(doc.get('text', ''))[:200]!r}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def recipe_tables(manifest: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Tables for MLflow: contamination per eval set, quality deciles, the source mixture."""
    tables = {}
    sets = (manifest.get("contamination") or {}).get("sets") or {}
    if sets:
        tables["contamination"] = [{"eval_set": name, **entry} for name, entry in sets.items()]
    deciles = (manifest.get("quality") or {}).get("deciles") or []
    if deciles:
        tables["quality_deciles"] = deciles
    mixture = (manifest.get("mixture") or {}).get("sources") or {}
    if mixture:
        tables["mixture"] = [{"source": name, **entry} for name, entry in mixture.items()]
    return tables
