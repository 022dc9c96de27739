"""Lineage: what each stage read and wrote, as MLflow datasets, and each registered checkpoint
as an MLflow LoggedModel tied to its training run, its eval metrics and their datasets.

In: a stage's name, its output folder `<workdir>/<stage>/<fingerprint>` and its upstream
folders (their results), the config (source, fine-tuning and eval files). Out:

- `stage_lineage()`: a `StageLineage` of `DataRef`s (name, stable URI, digest, kind, profile,
  schema) for what the stage read (with a context: source, input, training, evaluation) and
  wrote. A stage output's URI is `file://<workdir>/<stage>/<fingerprint>` and its digest the
  fingerprint, so every run names one output the same way; sources and task files get a digest
  of their files' names and sizes; the registered model is `mlflow://<store>/models/NAME`, the
  version in its digest. Before a stage runs its refs have the URIs and no counts yet. Flows
  turn these into Prefect assets as well.
- `log_stage_datasets()`: the refs as dataset inputs of the stage's MLflow run
  (`mlflow.data` datasets with source URI, digest, schema and a profile of row, token and file
  counts; the context tag says read or written), so its Datasets panel shows both.
- `link_registered_model()`: the registered version's LoggedModel gets the model's params and
  provenance tags, its eval metrics (each with the dataset it was measured on, logged on the
  evaluate run), and is logged as an output of its training run and of the pipeline's run,
  which also gets tags and a description line naming the version.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig
from pipeline.outputs import StageResult, read_result
from pipeline.tracking.runs import flatten, redact, safe_params

DOCUMENT_STAGES = ("ingest", "clean", "dedup")
MODEL_STAGES = ("pretrain", "finetune")
CONTEXT_TAG = "mlflow.data.context"
WRITTEN = "output"  # the context of what a stage wrote (MLflow datasets are run inputs)


@dataclass(frozen=True)
class DataRef:
    name: str  # "dedup documents", "source wikitext2", ...
    uri: str  # stable: file://<workdir>/<stage>/<fingerprint>, a source's path, mlflow://...
    digest: str  # the stage fingerprint, or a digest of the files' names and sizes
    kind: str  # documents, tokenizer, token shards, model, examples, eval table, files, ...
    profile: dict[str, Any] = field(default_factory=dict)
    schema: tuple[tuple[str, str], ...] = ()  # (column, MLflow type)


@dataclass(frozen=True)
class StageLineage:
    stage: str
    reads: tuple[tuple[DataRef, str], ...]  # (what, context)
    writes: tuple[DataRef, ...]


# ------------------------------------------------------------------------------------ refs


def _result(folder: Path) -> StageResult:
    try:
        return read_result(folder)
    except (OSError, ValueError):
        return StageResult()


_ARROW_TYPES = {"string": "string", "large_string": "string", "bool": "boolean"}
_ARROW_TYPES |= {"int32": "integer", "int64": "long", "float": "float", "double": "double"}


def _documents(stage: str, folder: Path) -> DataRef:
    import pyarrow.parquet as pq

    parts = sorted(folder.glob("part-*.parquet"))
    rows = sum(pq.read_metadata(p).num_rows for p in parts)
    schema: tuple[tuple[str, str], ...] = ()
    if parts:
        arrow = pq.read_schema(parts[0])
        schema = tuple((f.name, _ARROW_TYPES.get(str(f.type), "string")) for f in arrow)
    profile = {
        "documents": rows,
        "files": len(parts),
        "bytes": sum(p.stat().st_size for p in parts),
    }
    return DataRef(f"{stage} documents", folder.as_uri(), folder.name, "documents", profile, schema)


def _tokenizer(folder: Path) -> DataRef:
    stats = _result(folder).stats
    profile = {
        k: stats[k]
        for k in ("vocab_size", "heldout_bytes_per_token", "heldout_words_per_token")
        if k in stats
    }
    if "vocab_size" not in profile and (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        profile["vocab_size"] = Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size()
    return DataRef("tokenizer", folder.as_uri(), folder.name, "tokenizer", profile)


def _shards(folder: Path) -> DataRef:
    counts = _result(folder).counts
    keys = ("train_tokens", "val_tokens", "train_documents", "val_documents")
    profile = {k: counts[k] for k in keys if k in counts}
    schema = (("token_id", "integer"),)  # flat arrays of ids, documents separated by <|endoftext|>
    return DataRef("token shards", folder.as_uri(), folder.name, "token shards", profile, schema)


def _model(stage: str, folder: Path) -> DataRef:
    metrics = _result(folder).metrics
    keys = ("num_params", "steps", "tokens_seen", "best_val_loss")
    profile = {k: metrics[k] for k in keys if isinstance(metrics.get(k), (int, float))}
    return DataRef(f"{stage} checkpoint", folder.as_uri(), folder.name, "model", profile)


def _examples(folder: Path) -> DataRef:
    by_task = _result(folder).counts.get("examples_by_task", {})
    profile = {
        f"{split}_examples": sum(int(c.get(split, 0)) for c in by_task.values())
        for split in ("train", "eval")
    }
    profile["tasks"] = len(by_task)
    uri = (folder / "examples").as_uri()
    schema = (("task", "string"), ("prompt", "string"), ("response", "string"))
    return DataRef("fine-tuning examples", uri, folder.name, "examples", profile, schema)


def _eval_table(folder: Path) -> DataRef:
    result = _result(folder)
    profile = {"rows": len(result.tables.get("eval_table", [])), "metrics": len(result.metrics)}
    columns = ("task", "metric", "value", "stderr", "examples", "method", "note")
    types = {"value": "double", "stderr": "double", "examples": "long"}
    schema = tuple((c, types.get(c, "string")) for c in columns)
    return DataRef("eval table", folder.as_uri(), folder.name, "eval table", profile, schema)


def output_ref(stage: str, folder: Path) -> list[DataRef]:
    """What a complete stage output folder holds, as refs (a fine-tune: model and examples)."""
    folder = Path(folder).resolve()
    if stage in DOCUMENT_STAGES:
        return [_documents(stage, folder)]
    if stage == "tokenizer":
        return [_tokenizer(folder)]
    if stage == "shards":
        return [_shards(folder)]
    if stage == "pretrain":
        return [_model(stage, folder)]
    if stage == "finetune":
        return [_model(stage, folder), _examples(folder)]
    if stage == "evaluate":
        return [_eval_table(folder)]
    return []


def files_ref(name: str, path: str, files: list[Path], kind: str = "files") -> DataRef:
    """Input files named in the config (a source, a task's data): digest of names and sizes."""
    listed = []
    for file in files:
        try:
            listed.append([file.name, file.stat().st_size])
        except OSError:
            listed.append([file.name, None])
    digest = hashlib.blake2b(
        json.dumps([path, listed]).encode(), digest_size=8
    ).hexdigest()  # names and sizes, not contents: the stage fingerprint covers the contents
    uri = path if "://" in path else Path(path).resolve().as_uri()
    profile = {"files": len(files), "bytes": sum(size or 0 for _, size in listed)}
    return DataRef(name, uri, digest, kind, profile)


def source_refs(config: PipelineConfig, ingest_counts: dict[str, Any]) -> list[DataRef]:
    """One ref per configured source, with its ingested document count when known."""
    from pipeline.ingest.files import match_source_files, resolve_source_path

    refs = []
    by_source = ingest_counts.get("by_source", {})
    for source in config.sources:
        label = source.name or f"{source.type}:{source.path}"
        resolved = resolve_source_path(source.path, config.base_dir)
        local = "://" not in resolved
        files: list[Path] = []
        hub = not source.local_only and not Path(resolved).exists()  # a hub dataset's name
        if local and not hub:
            files = match_source_files(source.folder_suffixes, source.path, config.base_dir).files
        elif hub:
            resolved = f"hf://datasets/{source.path}"  # a hub dataset, streamed
        ref = files_ref(f"source {label}", redact(resolved), files, kind="source")
        documents = (by_source.get(label) or {}).get("documents")
        if documents is not None:
            ref.profile["documents"] = documents
        refs.append(ref)
    return refs


def _task_refs(tasks: list[Any], base_dir: str, prefix: str) -> dict[str, DataRef]:
    """Refs of the file tasks (by task name) whose files exist."""
    from pipeline.config import ApplicationTask, task_name
    from pipeline.eval_files import TaskSkipped, task_files
    from pipeline.finetune.examples import named_input_files

    refs = {}
    for task in tasks:
        if getattr(task, "path", None) is None:
            continue
        try:
            named = (
                named_input_files(task, base_dir)
                if isinstance(task, ApplicationTask)
                else task_files(task, base_dir)
            )
        except (TaskSkipped, FileNotFoundError):
            continue  # a skipped task read nothing
        path = task.path if "://" in task.path else str(Path(base_dir) / task.path)
        name = task_name(task)
        refs[name] = files_ref(f"{prefix} {name}", path, [Path(f) for _, f in named], "task files")
    return refs


def registered_ref(
    tracking_uri: str | None, name: str, registered: dict[str, Any] | None = None
) -> DataRef:
    """The registered model as a URI, mlflow://<server or sqlite file>/models/NAME; `registered`
    (the register stage's result) names the version this registration made."""
    from urllib.parse import urlsplit

    where = "local"
    if tracking_uri:
        parts = urlsplit(redact(tracking_uri))
        if parts.scheme.startswith("sqlite"):
            where = "sqlite" + parts.path.replace("//", "/")
        else:
            where = parts.netloc.split("@")[-1] or parts.scheme
    uri = f"mlflow://{where}/models/{name}"
    if not registered:
        return DataRef(name, uri, "", "registered model")
    version = str(registered["version"])
    profile = {"version": version, "promoted": bool(registered.get("promoted"))}
    profile[registered["metric"]] = registered["value"]
    return DataRef(f"{name} v{version}", uri, f"v{version}", "registered model", profile)


def _document_stage(upstream: dict[str, Path]) -> str:
    """The document stage a stage read (the last of the document stages the plan has)."""
    return next((n for n in ("quality", "decontaminate", "dedup") if n in upstream), "dedup")


def stage_lineage(
    stage: str,
    output: Path,
    upstream: dict[str, Path],
    config: PipelineConfig,
    result: StageResult | None,
    tracking_uri: str | None = None,
) -> StageLineage:
    """What `stage` read and wrote (see the module docstring)."""
    reads: list[tuple[DataRef, str]] = []

    def read(name: str, context: str = "input", kinds: tuple[str, ...] = ()) -> None:
        if name in upstream:
            refs = output_ref(name, upstream[name])
            reads.extend((r, context) for r in refs if not kinds or r.kind in kinds)

    writes = output_ref(stage, output)
    if stage == "ingest":
        counts = result.counts if result is not None else {}
        reads += [(ref, "source") for ref in source_refs(config, counts)]
    elif stage in ("clean", "dedup"):
        read(DOCUMENT_STAGES[DOCUMENT_STAGES.index(stage) - 1])
    elif stage == "tokenizer":
        read(_document_stage(upstream), "training")
    elif stage == "shards":
        read(_document_stage(upstream))
        read("tokenizer")
    elif stage == "pretrain":
        read("shards", "training")
        read("tokenizer")
    elif stage == "finetune":
        read("pretrain")
        tasks = _task_refs(config.finetune.tasks, config.base_dir, "task")
        reads += [(ref, "training") for ref in tasks.values()]
    elif stage == "evaluate":
        read("finetune" if "finetune" in upstream else "pretrain", kinds=("model",))
        read("shards", "evaluation")
        tasks = _task_refs(config.evaluate.tasks, config.base_dir, "eval")
        reads += [(ref, "evaluation") for ref in tasks.values()]
    elif stage == "register":
        read("evaluate")
        read("finetune" if "finetune" in upstream else "pretrain", kinds=("model",))
        registered = result.details.get("registered") if result is not None else None
        writes = [registered_ref(tracking_uri, config.register.model_name, registered)]
    return StageLineage(stage, tuple(reads), tuple(writes))


# ---------------------------------------------------------------------------------- MLflow

NOT_DATASETS = ("model", "registered model")  # these are LoggedModels, not datasets


def mlflow_dataset(ref: DataRef) -> Any:
    """The ref as an `mlflow.entities.Dataset` built through `mlflow.data`."""
    from mlflow.data.dataset_source_registry import get_registered_sources, resolve_dataset_source
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset
    from mlflow.types import ColSpec, DataType, Schema

    # MLflow registers the local source once per scheme ("" and file): one of each kind.
    kinds = list({s.__name__: s for s in reversed(get_registered_sources())}.values())
    try:
        source = resolve_dataset_source(ref.uri, candidate_sources=kinds)
    except Exception:  # a scheme MLflow has no dataset source for (hf://): kept as a URL
        source = HTTPDatasetSource(ref.uri)
    schema = Schema([ColSpec(DataType[t], n) for n, t in ref.schema]) if ref.schema else None
    fields = MetaDataset(source, name=ref.name, digest=ref.digest, schema=schema).to_dict()
    fields["profile"] = json.dumps({"kind": ref.kind, **ref.profile})
    return Dataset(**fields)


def log_stage_datasets(client: Any, run_id: str, lineage: StageLineage) -> None:
    """The stage's reads and writes as dataset inputs of its run (context: read as, or output)."""
    from mlflow.entities import DatasetInput, InputTag

    inputs = [
        DatasetInput(mlflow_dataset(ref), [InputTag(CONTEXT_TAG, context)])
        for ref, context in [*lineage.reads, *((w, WRITTEN) for w in lineage.writes)]
        if ref.kind not in NOT_DATASETS
    ]
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


def metric_datasets(eval_lineage: StageLineage) -> dict[str, DataRef]:
    """Which dataset each eval task was measured on: `val` on the held-out token shards, a file
    task on its files."""
    out = {}
    for ref, context in eval_lineage.reads:
        if context != "evaluation":
            continue
        if ref.kind == "token shards":
            out["val"] = ref
        elif ref.name.startswith("eval "):
            out[ref.name.removeprefix("eval ")] = ref
    return out


def logged_model_id(version: Any) -> str | None:
    """The LoggedModel behind a model version: its `model_id`, or the id in its `models:/m-...`
    source (a version registered from a logged model's URI may leave `model_id` empty)."""
    model_id = getattr(version, "model_id", None)
    source = str(getattr(version, "source", "") or "")
    if not model_id and source.startswith("models:/m-"):
        model_id = source.removeprefix("models:/").split("/", 1)[0]
    return model_id or None


def link_registered_model(
    client: Any,
    registered: dict[str, Any],
    *,
    parent_run_id: str,
    training_run_id: str | None,
    evaluate_run_id: str | None,
    eval_table: list[dict[str, Any]],
    eval_lineage: StageLineage | None,
    model_config: dict[str, Any],
    tags: dict[str, str],
    version_url: str | None = None,
    run_url: Callable[[str], str | None] = lambda run_id: None,
    trained_by: str = "pretrain",
) -> str | None:
    """Tie the registered version's LoggedModel to its runs, metrics and datasets; returns its
    model id (None where the registry keeps no LoggedModel for it)."""
    from mlflow.entities import LoggedModelOutput, Metric, RunTag

    name, number = registered["model_name"], str(registered["version"])
    model_id = logged_model_id(client.get_model_version(name, number))
    if not model_id:
        return None

    def shown(text: str, url: str | None) -> str:
        return f"[{text}]({url})" if url else f"`{text}`"

    description = (
        f"{shown(f'{name} version {number}', version_url)}, registered by the pipeline run "
        f"{shown(parent_run_id[:8], run_url(parent_run_id))}. "
        + (
            f"Trained in the {trained_by} run "
            f"{shown(training_run_id[:8], run_url(training_run_id))}; "
            if training_run_id
            else ""
        )
        + "its metrics were measured in the evaluate run"
        + (f" {shown(evaluate_run_id[:8], run_url(evaluate_run_id))}" if evaluate_run_id else "")
        + ", each on the dataset shown beside it."
    )
    client.set_logged_model_tags(
        model_id,
        {
            "mlflow.note.content": description,  # the model page's description
            **tags,
            "llmpipe.registered_version": f"{name}/{number}",
            "llmpipe.pipeline_run_id": parent_run_id,
            **({"llmpipe.training_run_id": training_run_id} if training_run_id else {}),
        },
    )
    if model_config:
        client.log_model_params(model_id, safe_params(flatten(model_config)))
    datasets = metric_datasets(eval_lineage) if eval_lineage else {}
    now = int(time.time() * 1000)
    metrics = []
    for row in eval_table:
        value = row.get("value")
        if not isinstance(value, (int, float)) or row.get("task") in ("model", "generations"):
            continue
        ref = datasets.get(row["task"])
        metrics.append(
            Metric(
                f"{row['task']}_{row['metric']}",
                float(value),
                now,
                0,
                model_id=model_id,
                dataset_name=ref.name if ref else None,
                dataset_digest=ref.digest if ref else None,
            )
        )
    if evaluate_run_id and metrics:  # the run that measured them; the model page lists them
        client.log_batch(evaluate_run_id, metrics=metrics)
    if training_run_id:
        client.log_outputs(training_run_id, [LoggedModelOutput(model_id, 0)])
    client.log_outputs(parent_run_id, [LoggedModelOutput(model_id, 0)])
    note = client.get_run(parent_run_id).data.tags.get("mlflow.note.content", "")
    shown = (
        f"[{name} version {number}]({version_url})" if version_url else f"{name} version {number}"
    )
    line = f"Registered: {shown} (`models:/{name}/{number}`, logged model `{model_id}`)."
    parent_tags = {
        "llmpipe.registered_model": name,
        "llmpipe.registered_version": number,
        "llmpipe.registered_model_uri": f"models:/{name}/{number}",
        "llmpipe.logged_model_id": model_id,
        "mlflow.note.content": f"{note}\n\n{line}" if line not in note else note,
    }
    client.log_batch(parent_run_id, tags=[RunTag(k, v) for k, v in parent_tags.items()])
    return model_id
