"""Human-readable summaries of stage results: markdown for the Prefect UI, numbers for MLflow.

In: a stage (pipeline/stages) and its `StageResult`. Out: `stage_markdown` (what every stage
shows: counts, rejection reasons, metrics, sources, languages, examples, generations, then the
stage's own sections from `Stage.summary`), `stage_metrics` (flat numbers for MLflow), and the
section renderers the stages choose from (rules, near duplicates, contamination, the quality
classifier, the source mixture, the evaluation table, a registered version). No orchestrator
imports here.
"""

from __future__ import annotations

from typing import Any

from pipeline.outputs import StageResult
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


def stage_metrics(result: StageResult) -> dict[str, float]:
    """Numeric counts, stats, metrics and edits of a result, flattened for MLflow."""
    out = {}
    for section in (result.counts, result.stats, result.metrics, result.details.get("edits")):
        for key, value in flatten(section or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{key}"] = value
    out["stage_seconds"] = result.seconds  # this stage's own time (not the whole run's)
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


def cleaning_sections(result: StageResult) -> list[str]:
    """Clean's rule table, its edits and rejected examples: what a person reads to judge a rule."""
    parts = []
    rules = result.tables.get("rules") or []
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
    edits = result.details.get("edits") or {}
    if edits:
        rows = [(name, _fmt(n)) for name, n in edits.items()]
        parts.append("## Edits\n\n" + _table(rows, ("edit", "count")))
    rejected = result.details.get("examples_rejected") or {}
    if rejected:
        lines = ["## Rejected examples"]
        for rule, docs in rejected.items():
            for doc in docs[:2]:
                lines.append(f"- **{rule}**: {str(doc.get('text', ''))[:200]!r}")
        parts.append("\n".join(lines))
    return parts


def dedup_sections(result: StageResult) -> list[str]:
    """Dedup's near-duplicate examples, removed text beside kept text."""
    near = (result.details.get("near_duplicates") or {}).get("examples") or []
    if not near:
        return []
    rows = [(e["removed"][:150], e["kept"][:150]) for e in near]
    return ["## Near duplicates\n\n" + _table(rows, ("removed", "kept"))]


def contamination_sections(result: StageResult) -> list[str]:
    """Decontamination's report per eval set, and the matches found."""
    parts = []
    contamination = result.details.get("contamination") or {}
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
    found = result.tables.get("contamination_examples") or []
    if found:
        rows = [(e["set"], e["example_id"], e["action"], e["matching_words"][:150]) for e in found]
        parts.append(
            "## Matches\n\n" + _table(rows, ("eval set", "example", "action", "matching words"))
        )
    return parts


def quality_sections(result: StageResult) -> list[str]:
    """The quality classifier's held-out measures, its score histogram and a document at each
    decile."""
    parts = []
    quality = result.details.get("quality") or {}
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
    return parts


def mixture_sections(result: StageResult) -> list[str]:
    """The shards' source mixture: tokens available, asked and written per source."""
    parts = []
    mixture = result.details.get("mixture") or {}
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


def registered_section(result: StageResult) -> list[str]:
    registered = result.details.get("registered")
    if not registered:
        return []
    return [
        f"Registered **{registered['model_name']}** version **{registered['version']}** "
        f"({registered['metric']} = {registered['value']:.4f}); "
        + ("promoted to `@champion`" if registered["promoted"] else "kept as `@challenger`")
        + (f": {registered['reason']}." if registered.get("reason") else ".")
    ]


def stage_markdown(stage: Any, result: StageResult) -> str:
    """The card of one stage (`stage`: a pipeline.stages Stage): its counts and metrics, the
    sources, refusals, repairs, languages, examples and generations it has, then its own
    sections (`stage.summary`)."""
    reused = " (reused: output already complete)" if result.reused else ""
    parts = [
        f"# {stage.name}{reused}",
        f"Output `{result.fingerprint}`, {result.seconds:.1f} s.",
    ]
    numbers = stage_metrics(result)
    numbers.pop("stage_seconds", None)
    if numbers and not result.tables.get("eval_table"):
        parts.append(_table([(k, _fmt(v)) for k, v in numbers.items()], ("measure", "value")))
    counts = result.counts
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
    parts.extend(stage.summary(result))
    for title, key in (("Examples", "examples"), ("Generations", "generations")):
        rows = result.tables.get(key) or []
        if rows:
            header = tuple(rows[0].keys())
            parts.append(f"## {title}\n\n" + _table([tuple(r.values()) for r in rows], header))
    return "\n\n".join(parts)
