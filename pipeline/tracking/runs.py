"""The MLflow run tree of a pipeline run: one parent run, one nested run per stage.

In: a tracking URI and an experiment name. Out: run ids, with params, metrics, tags and
artifacts logged through an explicit `MlflowClient` (never the thread-local "active run"), so
stages can log from any thread or process. Parameters pass through `safe_params`, which drops
anything that looks like a secret.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from pipeline.credentials import redact

_SECRET_KEY = re.compile(
    r"(password|passwd|secret|api[_-]?key|access[_-]?key|credential|auth)", re.I
)
_NOT_IN_NAMES = re.compile(r"[^\w\-. :/]")  # MLflow's allowed metric-name characters
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def default_tracking_uri(workdir: Path) -> str:
    """A SQLite store in the work dir: MLflow 3 refuses the old `./mlruns` file store."""
    return f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(configured: str | None, workdir: Path) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(workdir)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def safe_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flattened params as strings, without secret-looking keys or URI credentials."""
    params = {}
    for key, value in flatten(data, prefix).items():
        if _SECRET_KEY.search(key.rsplit(".", 1)[-1]):
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        params[key] = redact(text)[:MAX_PARAM_CHARS]
    return params


@contextmanager
def _sqlite_setup_lock(tracking_uri: str) -> Iterator[None]:
    """An exclusive file lock beside a SQLite store (nothing for other stores)."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    database = Path(tracking_uri.removeprefix("sqlite:///"))  # sqlite:////abs or sqlite:///rel
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".setup-lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Tracker:
    """Creates and logs to the runs of one experiment."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: str | Path | None = None):
        self.tracking_uri = tracking_uri
        # Two runs starting at once on one SQLite store would both create (migrate) the
        # database and the experiment: the first one to hold the lock does it.
        with _sqlite_setup_lock(tracking_uri):
            self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            self.experiment_id = self._experiment_id(experiment, artifact_root)

    def _experiment_id(self, experiment: str, artifact_root: str | Path | None) -> str:
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            return found.experiment_id
        # With a local store, keep artifacts beside it instead of in the caller's CWD; a
        # tracking server keeps them in its own artifact store (mlflow-artifacts:/).
        local = self.tracking_uri.startswith(("sqlite:", "file:")) or "://" not in self.tracking_uri
        location = None
        if artifact_root and local:  # a URL (s3://): the work dir's object store
            text = str(artifact_root)
            location = text if "://" in text else Path(text).resolve().as_uri()
        try:
            return self.client.create_experiment(
                experiment,
                artifact_location=location,
                # The MLflow UI then opens it as model training, not as a GenAI app.
                tags={"mlflow.experimentKind": "custom_model_development"},
            )
        except MlflowException as exc:  # another run (on a server) created it just now
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                raise exc from None
            return found.experiment_id

    def start_run(
        self, name: str, parent_id: str | None = None, tags: dict[str, str] | None = None
    ) -> str:
        tags = dict(tags or {})
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        return run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def log_params(self, run_id: str, params: Mapping[str, Any], prefix: str = "") -> None:
        items = [Param(k, v) for k, v in safe_params(params, prefix).items()]
        for start in range(0, len(items), 100):  # MLflow's batch limit for params
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int = 0) -> None:
        now = int(time.time() * 1000)
        items = [
            Metric(_NOT_IN_NAMES.sub("_", k), float(v), now, step)
            for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        for start in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[start : start + 1000])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, redact(str(v))) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        elif path.is_file():
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_dict(self, run_id: str, data: Any, artifact_file: str) -> None:
        self.client.log_dict(run_id, data, artifact_file)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_table(self, run_id: str, rows: list[dict[str, Any]], artifact_file: str) -> None:
        import pandas as pd

        if rows:
            self.client.log_table(run_id, pd.DataFrame(rows), artifact_file)
