"""Stage outputs as Prefect assets, and the run's lineage drawn as a graph.

In: a planned stage (pipeline/dag.py) and the config; after it ran, its manifest. Out:

- `materializing()`: the stage's Prefect task as a `@materialize` task of the stage's outputs,
  whose keys are known before it runs: `file://<workdir>/<stage>/<fingerprint>` (and, for a
  fine-tune, its examples), or `mlflow://<store>/models/NAME` for the registered model (each
  registration materializes a new version of it). What the stage reads (upstream stage outputs,
  source files, task files) are its `asset_deps`. Inside the task, `add_stage_metadata()` adds
  what it wrote (documents, tokens, files, digest, version, MLflow run) to the materialization.
  From these events Prefect Cloud draws the asset graph from the source files to the registered
  model. A stage reused from an earlier run (Cached) materializes nothing: its asset is the one
  that run made.
- `lineage_markdown()`: the same graph as a mermaid flowchart plus a table of the assets, for
  the flow run's `llmpipe-lineage` artifact (the open-source Prefect server keeps the asset
  events in its event feed but has no asset graph page; its newer UI draws mermaid).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from prefect import get_run_logger
from prefect.assets import Asset, AssetProperties, add_asset_metadata, materialize
from prefect.context import AssetContext
from prefect.tasks import Task

from pipeline.config import PipelineConfig
from pipeline.dag import PlannedStage
from pipeline.outputs import StageResult
from pipeline.tracking.lineage import DataRef, StageLineage, stage_lineage

# Characters Prefect refuses in asset keys (prefect.types.names.RESTRICTED_ASSET_CHARACTERS).
_RESTRICTED = re.compile(r"[\s#?&%\"'<>\[\]{}|\\^`]")
MAX_KEY = 512


def asset_key(uri: str) -> str:
    """A valid Prefect asset key for a URI: restricted characters become `_`, a lowercase
    scheme, and an over-long key keeps its start and a hash of the whole."""
    scheme, _, rest = uri.partition("://")
    key = f"{scheme.lower()}://{_RESTRICTED.sub('_', rest)}"
    if len(key) > MAX_KEY:
        digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
        key = f"{key[: MAX_KEY - 18]}--{digest}"
    return key


def _title(ref: DataRef) -> str:
    """The name with a short digest (unless it has none, or the name holds it: `model v3`)."""
    if not ref.digest or ref.digest in ref.name.split():
        return ref.name
    return f"{ref.name} {ref.digest[:8]}"


def stage_asset(ref: DataRef, url: str | None = None) -> Asset:
    return Asset(
        key=asset_key(ref.uri),
        properties=AssetProperties(
            name=_title(ref),
            description=f"llmpipe {ref.kind}" + (f", digest {ref.digest}" if ref.digest else ""),
            url=url,
        ),
    )


def _dependency(ref: DataRef) -> Asset:
    """An upstream asset: its key only when a stage of ours materializes it (so its properties
    stay the ones that stage set); with a name when it is outside data (a source file)."""
    if ref.kind in ("source", "task files"):
        return stage_asset(ref)
    return Asset(key=asset_key(ref.uri))


def _lineage(
    planned: PlannedStage,
    config: PipelineConfig,
    tracking_uri: str | None,
    result: StageResult | None,
) -> StageLineage:
    upstream = {name: up.path for name, up in planned.upstream.items()}
    return stage_lineage(planned.name, planned.output.path, upstream, config, result, tracking_uri)


def materializing(
    task: Task,
    options: dict[str, Any],
    planned: PlannedStage,
    config: PipelineConfig,
    tracking_uri: str | None,
    url: str | None = None,
) -> Task:
    """`task` (made with `options`) as the `@materialize` task of the stage's outputs."""
    try:
        lineage = _lineage(planned, config, tracking_uri, None)  # the keys; counts come after
    except Exception as exc:  # lineage is a record beside the results: never stops a stage
        get_run_logger().warning("%s: no Prefect assets: %r", planned.name, exc)
        return task
    if not lineage.writes:
        return task
    assets = [stage_asset(ref, url) for ref in lineage.writes]
    deps = list({_dependency(ref).key: _dependency(ref) for ref, _ in lineage.reads}.values())
    return materialize(*assets, asset_deps=deps, by="llmpipe", name=task.name, **options)(task.fn)


def add_stage_metadata(
    planned: PlannedStage,
    config: PipelineConfig,
    result: StageResult,
    tracking_uri: str | None,
    extra: dict[str, Any] | None = None,
) -> None:
    """In the stage's task, after the stage: what it wrote, as its assets' metadata."""
    context = AssetContext.get()
    if context is None or not context.downstream_assets:
        return  # not a materializing task run
    keys = {asset.key for asset in context.downstream_assets}
    try:
        writes = _lineage(planned, config, tracking_uri, result).writes
    except Exception as exc:
        get_run_logger().warning("%s: no asset metadata: %r", planned.name, exc)
        return
    for ref in writes:
        key = asset_key(ref.uri)
        if key in keys:
            metadata = {"kind": ref.kind, "uri": ref.uri, "digest": ref.digest, **ref.profile}
            add_asset_metadata(key, {**metadata, **(extra or {})})


def _node(ref: DataRef) -> str:
    return "n" + hashlib.sha1(ref.uri.encode()).hexdigest()[:10]


def _label(ref: DataRef) -> str:
    """Name, two counts (942 documents, val_bpb 1.234) and the short digest."""
    counts = []
    for key, value in ref.profile.items():
        if isinstance(value, bool) or key in ("bytes", "files"):
            continue
        if isinstance(value, int):
            counts.append(f"{value:,} {key.replace('_', ' ')}")
        elif isinstance(value, float):
            counts.append(f"{key} {value:.4g}")
    digest = [] if not ref.digest or ref.digest in ref.name.split() else [ref.digest[:12]]
    return "<br/>".join([ref.name, *counts[:2], *digest]).replace('"', "#quot;")


def lineage_markdown(lineages: list[StageLineage]) -> str:
    """A mermaid flowchart (sources -> stage outputs -> registered model) and a table."""
    refs: dict[str, DataRef] = {}
    edges: list[tuple[str, str, str]] = []
    for lineage in lineages:
        for ref, _ in lineage.reads:
            refs.setdefault(_node(ref), ref)
        for ref in lineage.writes:
            refs[_node(ref)] = ref
            for read, _ in lineage.reads:
                edges.append((_node(read), lineage.stage, _node(ref)))
    shape = {"source": ("[(", ")]"), "task files": ("[(", ")]"), "model": ("[[", "]]")}
    shape["registered model"] = ("{{", "}}")
    lines = ["flowchart TB"]
    for node, ref in refs.items():
        left, right = shape.get(ref.kind, ("[", "]"))
        lines.append(f'  {node}{left}"{_label(ref)}"{right}')
    for start, stage, end in dict.fromkeys(edges):
        lines.append(f"  {start} -->|{stage}| {end}")
    rows = [
        "| asset | kind | key | digest |",
        "|---|---|---|---|",
        *(
            f"| {ref.name} | {ref.kind} | `{asset_key(ref.uri)}` | `{ref.digest}` |"
            for ref in refs.values()
        ),
    ]
    return "\n".join(
        [
            "# Lineage of this run",
            "",
            "From the source files through each stage's output to the registered model "
            "(edges are the stages; the same assets are Prefect asset events of this run).",
            "",
            "```mermaid",
            *lines,
            "```",
            "",
            *rows,
        ]
    )
