"""Incremental runs: what the earlier runs of a config took in, and what the next one builds on.

In: a config with `run.mode: incremental`, its work dir, and the MLflow registry. The record
of earlier increments lives in `<workdir>/incremental/<config name>/`:
  - `increments.json`: one entry per successful increment (its stage outputs, the registered
    version), written atomically;
  - `seen/increment-NNNN.parquet`: the keys of every document each increment ingested: its id,
    its URL and a hash of its text.
Out:
  - `resolve(config, workdir, tracking_uri)`: the config of the next increment, with the `run`
    fields (and `dedup.previous`) filled from the record: skip what was ingested before, dedup
    against everything kept so far (the last dedup output's signatures), keep the first
    tokenizer, evaluate on the first increment's held-out split (and the new one's), start
    pretraining from the current `@champion` with its optimizer state (`init_state_from`, found
    through the champion's `llmpipe.pretrain_output` tag), and replay the documents of every
    earlier increment (`replay_from`: their shards folders, from the record). With no earlier
    increment, the config is returned unchanged (a full run).
  - `drop_seen(shards_dir, seen_dir)`: removes already-ingested documents from ingest shards.
  - `record(config, workdir, results)`: adds the finished run to the record.
No orchestrator imports here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import PipelineConfig
from pipeline.outputs import StageResult, write_json_atomic

SEEN_DIR = "seen"


def state_dir(workdir: Path, config: PipelineConfig) -> Path:
    """`<workdir>/incremental/<name>`; `name` is a plain name (checked by the config), and a
    name that would lead anywhere else is refused here too."""
    root = Path(workdir) / "incremental"
    folder = root / config.name
    if folder.resolve().parent != root.resolve():
        raise ValueError(f"name {config.name!r} is not a plain name: it cannot name a folder")
    return folder


def increments(workdir: Path, config: PipelineConfig) -> list[dict[str, Any]]:
    path = state_dir(workdir, config) / "increments.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []


def text_key(text: str) -> str:
    return "text:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def document_keys(ids: list[str], urls: list[str | None], texts: list[str]) -> list[list[str]]:
    """Each document's keys: a document is old when any of them was seen."""
    return [
        [f"id:{i}", *([f"url:{u}"] if u else []), text_key(t)]
        for i, u, t in zip(ids, urls, texts, strict=True)
    ]


def _shards(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("part-*.parquet"))


def seen_keys(seen_dir: Path) -> set[str]:
    keys: set[str] = set()
    for path in sorted(Path(seen_dir).glob("increment-*.parquet")):
        keys.update(pq.read_table(path, columns=["key"]).column("key").to_pylist())
    return keys


def drop_seen(shards_dir: Path, seen_dir: str | Path) -> dict[str, int]:
    """Remove the documents an earlier increment ingested; return how many, by source."""
    seen = seen_keys(Path(seen_dir))
    dropped: dict[str, int] = {}
    for path in _shards(shards_dir):
        table = pq.read_table(path)
        keys = document_keys(
            table.column("id").to_pylist(),
            table.column("url").to_pylist(),
            table.column("text").to_pylist(),
        )
        old = [any(k in seen for k in doc) for doc in keys]
        if not any(old):
            continue
        for source, is_old in zip(table.column("source").to_pylist(), old, strict=True):
            if is_old:
                dropped[source] = dropped.get(source, 0) + 1
        kept = table.filter(pc.invert(pa.array(old)))
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(kept, tmp)
        tmp.replace(path)
    return dropped


def resolve(config: PipelineConfig, workdir: Path, tracking_uri: str | None) -> PipelineConfig:
    """The config of the next increment (unchanged for a full run or the first increment)."""
    if config.run.mode != "incremental":
        return config
    done = increments(workdir, config)
    if not done:
        return config
    first, last = done[0], done[-1]
    init_from, pretrain_output = _champion(config, tracking_uri)
    if config.run.init_from:  # given by hand: its optimizer state is not known
        init_from, pretrain_output = config.run.init_from, None
    run = config.run.model_copy(
        update={
            "seen_before": config.run.seen_before or str(state_dir(workdir, config) / SEEN_DIR),
            "tokenizer_from": config.run.tokenizer_from or first["tokenizer"],
            "heldout_from": config.run.heldout_from or first["shards"],
            "init_from": init_from,
            "init_state_from": config.run.init_state_from or optimizer_state(pretrain_output),
            # every earlier increment's own documents (record order: oldest first)
            "replay_from": config.run.replay_from or [d["shards"] for d in done if d.get("shards")],
        }
    )
    dedup = config.dedup.model_copy(update={"previous": config.dedup.previous or last["dedup"]})
    return config.model_copy(update={"run": run, "dedup": dedup})


def _champion(config: PipelineConfig, tracking_uri: str | None) -> tuple[str | None, str | None]:
    """What pretraining continues from: (`models:/NAME/VERSION` of the current champion (a
    version, so the fingerprint is exact), the pretrain output folder it came from, from its
    lineage tag `llmpipe.pretrain_output`). When the pipeline fine-tunes, the champion is a
    fine-tuned model: pretraining continues from the pretrained weights it was tuned from."""
    if not tracking_uri:
        return None, None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name = config.register.model_name
    try:
        version = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None, None
    output = version.tags.get("llmpipe.pretrain_output") or None
    if config.finetune.enabled:
        pretrained = Path(output or "") / "final"
        if not (pretrained / "model.safetensors").is_file():
            return None, None
        return str(pretrained), output
    return f"models:/{name}/{version.version}", output


def optimizer_state(pretrain_output: str | None) -> str | None:
    """The trainer state (optimizer moments, step) saved with the weights a pretrain output's
    final/ holds: its last step checkpoint, when final/ is that step's weights (not best/)."""
    if not pretrain_output:
        return None
    folder = Path(pretrain_output)
    metrics = folder / "train_metrics.json"
    if not metrics.is_file():
        return None
    if json.loads(metrics.read_text(encoding="utf-8")).get("final_weights", "last") != "last":
        return None
    steps = sorted(
        p for p in (folder / "checkpoints").glob("step-*") if (p / "trainer_state.ckpt").is_file()
    )
    return str(steps[-1] / "trainer_state.ckpt") if steps else None


def record(
    config: PipelineConfig, workdir: Path, made: dict[str, tuple[Path, StageResult]]
) -> None:
    """Add a finished increment: its outputs (stage -> (output folder, result)) and the keys of
    the documents it ingested."""
    needed = ("ingest", "dedup", "tokenizer", "shards", "pretrain", "register")
    if config.run.mode != "incremental" or not all(stage in made for stage in needed):
        return  # a partial run, or one that found nothing new: no increment to build on
    folder = state_dir(workdir, config)
    done = increments(workdir, config)
    number = len(done) + 1
    seen = folder / SEEN_DIR
    seen.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for path in _shards(made["ingest"][0]):
        table = pq.read_table(path, columns=["id", "url", "text"])
        for doc in document_keys(
            table.column("id").to_pylist(),
            table.column("url").to_pylist(),
            table.column("text").to_pylist(),
        ):
            keys.extend(doc)
    tmp = seen / f".increment-{number:04d}.parquet.tmp"
    pq.write_table(pa.table({"key": pa.array(keys, pa.string())}), tmp)
    tmp.replace(seen / f"increment-{number:04d}.parquet")
    registered = made["register"][1].details.get("registered") or {}
    done.append(
        {
            "increment": number,
            **{
                stage: str(made[stage][0])
                for stage in ("ingest", "dedup", "tokenizer", "shards", "pretrain")
                if stage in made
            },
            "documents": made["ingest"][1].counts.get("documents"),
            "registered": registered.get("model_uri"),
            "promoted": registered.get("promoted"),
        }
    )
    write_json_atomic(folder / "increments.json", done)
