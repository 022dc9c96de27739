"""The model registry: checkpoints become MLflow model versions, chosen by alias.

In: a run id, a local model folder (weights, config, tokenizer) and its eval metrics. Out: a
registered model version tagged with those metrics, aliased `@challenger`, and `@champion`
when its promotion metric beats the current champion's (or there is none yet).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import pipeline
from pipeline.tracking.pyfunc import SIGNATURE

CHAMPION = "champion"
CHALLENGER = "challenger"
_ENTRY = Path(__file__).with_name("pyfunc_entry.py")


def _client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def better(candidate: float, incumbent: float | None, mode: str) -> bool:
    if incumbent is None or math.isnan(incumbent):
        return not math.isnan(candidate)
    return candidate < incumbent if mode == "min" else candidate > incumbent


def champion_metric(
    client: MlflowClient, name: str, metric: str
) -> tuple[str | None, float | None]:
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None
    value = version.tags.get(metric)
    return version.version, float(value) if value is not None else None


def register_model_dir(
    tracking_uri: str,
    run_id: str,
    model_dir: Path,
    name: str,
    metrics: dict[str, float],
    metric: str,
    mode: str,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Log `model_dir` as a pyfunc model of `run_id`, register it and apply the promotion rule."""
    if metric not in metrics:
        raise KeyError(
            f"register.metric {metric!r} is not among the eval metrics {sorted(metrics)}"
        )
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = _client(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(_ENTRY),
            artifacts={"model_dir": str(model_dir)},
            code_paths=[str(Path(pipeline.__file__).parent)],
            signature=SIGNATURE,
            # Written out instead of inferred: inference would load the model in a subprocess.
            pip_requirements=["torch", "tokenizers", "safetensors", "numpy", "mlflow"],
        )
    version = mlflow.register_model(
        info.model_uri, name, tags={k: str(v) for k, v in metrics.items()}
    )
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version.version, key, value)
    previous, incumbent = champion_metric(client, name, metric)
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    promoted = better(float(metrics[metric]), incumbent, mode)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    return {
        "model_name": name,
        "version": version.version,
        "model_uri": f"models:/{name}/{version.version}",
        "promoted": promoted,
        "previous_champion": previous,
        "previous_champion_metric": incumbent,
        "metric": metric,
        "value": float(metrics[metric]),
    }


def promote(tracking_uri: str, name: str, version: str | int) -> None:
    client = _client(tracking_uri)
    client.get_model_version(name, str(version))  # a clear error when it does not exist
    client.set_registered_model_alias(name, CHAMPION, str(version))


def list_versions(tracking_uri: str, name: str | None = None) -> list[dict[str, Any]]:
    """One row per model version: name, version, aliases, metrics (from tags), run, created."""
    client = _client(tracking_uri)
    names = [name] if name else [m.name for m in client.search_registered_models()]
    rows = []
    for model_name in names:
        aliases: dict[str, list[str]] = {}
        for alias, version in client.get_registered_model(model_name).aliases.items():
            aliases.setdefault(str(version), []).append(alias)
        for version in client.search_model_versions(f"name='{model_name}'"):
            rows.append(
                {
                    "name": model_name,
                    "version": int(version.version),
                    "aliases": ",".join(sorted(aliases.get(str(version.version), []))),
                    "run_id": version.run_id,
                    "created": version.creation_timestamp,
                    **{k: v for k, v in version.tags.items() if not k.startswith("mlflow.")},
                }
            )
    return sorted(rows, key=lambda r: (r["name"], r["version"]))
