"""Stage outputs as Prefect assets, and the run's lineage drawn as a graph.

In: a `StageLineage` (pipeline/tracking/lineage.py: what a stage read and wrote, with stable
URIs). Out:

- `materialize_stage()`: a `@materialize` task run per stage that produced something: its
  outputs are the assets (key `file://<workdir>/<stage>/<fingerprint>`, or
  `mlflow://.../models/NAME/VERSION` for the registered version), what it read are their
  `asset_deps` (upstream stage outputs, source files, task files), and the profile (documents,
  tokens, files, fingerprint, MLflow run) is the materialization's metadata. From these events
  Prefect Cloud draws the asset graph from the source files to the registered model. A stage
  reused from an earlier run materializes nothing: its asset is the one that run made.
- `lineage_markdown()`: the same graph as a mermaid flowchart plus a table of the assets, for
  the flow run's `llmpipe-lineage` artifact (the open-source Prefect server keeps the asset
  events in its event feed but has no asset graph page; its UI draws mermaid in artifacts).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from prefect.assets import Asset, AssetProperties, add_asset_metadata, materialize
from prefect.cache_policies import NO_CACHE

from pipeline.tracking.lineage import DataRef, StageLineage

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


def _description(ref: DataRef) -> str:
    shown = ", ".join(f"{k} {v}" for k, v in ref.profile.items() if not isinstance(v, dict))
    return f"llmpipe {ref.kind} (digest {ref.digest}){': ' + shown if shown else ''}"


def _title(ref: DataRef) -> str:
    """The name with a short digest (unless the name holds it already: `model v3`)."""
    return ref.name if ref.digest in ref.name.split() else f"{ref.name} {ref.digest[:8]}"


def stage_asset(ref: DataRef, url: str | None = None) -> Asset:
    return Asset(
        key=asset_key(ref.uri),
        properties=AssetProperties(
            name=_title(ref),
            description=_description(ref)[:2500],
            url=url,
        ),
    )


def _dependency(ref: DataRef) -> Asset:
    """An upstream asset: its key only when a stage of ours materializes it (so its properties
    stay the ones that stage set); with a name when it is outside data (a source file)."""
    if ref.kind in ("source", "task files"):
        return stage_asset(ref)
    return Asset(key=asset_key(ref.uri))


def _metadata(ref: DataRef, extra: dict[str, Any]) -> dict[str, Any]:
    return {"kind": ref.kind, "uri": ref.uri, "digest": ref.digest, **ref.profile, **extra}


def materialize_stage(
    lineage: StageLineage, url: str | None = None, extra: dict[str, Any] | None = None
) -> None:
    """Emit the stage's asset materializations (see the module docstring)."""
    if not lineage.writes:
        return
    assets = [stage_asset(ref, url) for ref in lineage.writes]
    deps = list({_dependency(ref).key: _dependency(ref) for ref, _ in lineage.reads}.values())
    metadata = {
        a.key: _metadata(ref, extra or {}) for a, ref in zip(assets, lineage.writes, strict=True)
    }

    @materialize(
        *assets,
        asset_deps=deps,
        by="llmpipe",
        name=f"{lineage.stage} assets",
        task_run_name=f"{lineage.stage} assets",
        cache_policy=NO_CACHE,  # each materialization is an event, never a cached result
        persist_result=False,
    )
    def record() -> None:
        for asset in assets:
            add_asset_metadata(asset, metadata[asset.key])

    record()


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
    digest = [] if ref.digest in ref.name.split() else [ref.digest[:12]]
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
