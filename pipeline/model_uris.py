"""MLflow model URIs in, registry versions, artifact URIs and local folders out: the one place
that resolves `models:/NAME@alias`, `models:/NAME/VERSION`, `models:/<logged model id>` and
`runs:/...`.

Resolved with an `MlflowClient` bound to the tracking URI given (as registry too) rather than by
`mlflow.artifacts.download_artifacts("models:/...")`, which looks names up in the process-wide
default registry instead of the one the pipeline uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


def is_mlflow_uri(spec: str) -> bool:
    return spec.startswith(MLFLOW_SCHEMES)


def _client(tracking_uri: str | None) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def registered_version(uri: str, tracking_uri: str | None) -> Any | None:
    """The registry's ModelVersion that `models:/NAME@alias` or `models:/NAME/N` names; None for
    any other URI (a logged model id, runs:/, a path)."""
    if not uri.startswith("models:/"):
        return None
    ref = uri.removeprefix("models:/").rstrip("/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return _client(tracking_uri).get_model_version_by_alias(name, alias)
    if "/" in ref:
        name, number = ref.split("/", 1)
        return _client(tracking_uri).get_model_version(name, number)
    return None


def artifact_uri(uri: str, tracking_uri: str | None) -> str:
    """Where the files of an MLflow URI are: a registered version's download URI, a logged
    model's artifact location; runs:/ and mlflow-artifacts:/ URIs as they are."""
    if not uri.startswith("models:/"):
        return uri
    version = registered_version(uri, tracking_uri)
    client = _client(tracking_uri)
    if version is None:  # a logged model id (models:/m-...): it lives in the tracking store
        return client.get_logged_model(uri.removeprefix("models:/").rstrip("/")).artifact_location
    return client.get_model_version_download_uri(version.name, version.version)


def download(uri: str, tracking_uri: str | None) -> Path:
    """The files of an MLflow URI in a local folder (MLflow's download cache)."""
    import mlflow.artifacts

    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=artifact_uri(uri, tracking_uri), tracking_uri=tracking_uri
        )
    )
