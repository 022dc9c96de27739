"""The model registry: evaluated checkpoints become MLflow model versions, chosen by alias.

In: a run id, a local model folder (weights, config, tokenizer), its eval metrics, the
promotion rule (`register` config: metric, direction, minimum improvement) and provenance tags
(data and tokenizer fingerprints, config hash, git commit, Prefect flow run). Out: a registered
model version tagged with all of it, aliased `@challenger`, and `@champion` when the rule says
it beats the current champion (or there is none yet).

Every alias change is written into the tags of each version it touches, as
`llmpipe.alias_log.NNN` = {"at", "alias", "change": "set" | "removed", "reason", "by"}, so a
version's history (promoted by the rule, displaced by v7, promoted by hand) reads from its tags.
`promote` moves an alias by hand and records it the same way.

Registration is idempotent: a version carries the registering stage's fingerprint as
`llmpipe.registration_key`, created with it in one registry write; a run killed after that write
leaves a version without aliases, and the rerun finds it by its key and completes it instead of
registering a second one.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import pipeline

CHAMPION = "champion"
CHALLENGER = "challenger"
ALIAS_LOG = "llmpipe.alias_log."
REGISTRATION_KEY = "llmpipe.registration_key"
_ENTRY = Path(__file__).with_name("pyfunc_entry.py")
# Tag namespaces that are not eval metrics (metrics are the plain `<task>_<metric>` tags).
NON_METRIC_PREFIXES = ("llmpipe.", "prefect.", "mlflow.")


@dataclass(frozen=True)
class PromotionRule:
    metric: str = "val_bpb"
    mode: str = "min"  # "min": lower wins; "max": higher wins
    min_improvement: float = 0.0
    # "better on new, not worse on old": a second metric the challenger may lose on by at most
    # guard_tolerance (relative to the champion's value) and still be promoted
    guard_metric: str | None = None
    guard_tolerance: float = 0.0

    def describe(self) -> str:
        direction = "lower" if self.mode == "min" else "higher"
        text = f"{self.metric}, {direction} is better, by at least {self.min_improvement:g}"
        if self.guard_metric:
            text += (
                f"; and {self.guard_metric} no worse than the champion's by more than "
                f"{self.guard_tolerance:.2%}"
            )
        return text


def guard_holds(rule: PromotionRule, candidate: float, incumbent: float | None) -> bool:
    """Whether the guard metric is within the tolerance of the champion's (no champion value:
    nothing to hold against)."""
    if math.isnan(candidate):
        return False
    if incumbent is None or math.isnan(incumbent):
        return True
    slack = abs(incumbent) * rule.guard_tolerance
    return candidate <= incumbent + slack if rule.mode == "min" else candidate >= incumbent - slack


_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextmanager
def _fluent_uris(uri: str) -> Iterator[None]:
    """MLflow's fluent `log_model`/`register_model` read the global tracking and registry URIs;
    `mlflow.set_*_uri` also exports them to the whole process's environment. Set both for the
    call, then put back what was there, so that a later run in this process (a sweep's next
    variant, a test, a server) does not silently write to this store."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_env = {k: os.environ.get(k) for k in _URI_VARIABLES}
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """Log and register a model without MLflow's notes to the terminal: the advice to add type
    hints (pyfunc.py explains why predict has none) and an input example (both with raw ANSI
    colour codes), a download progress bar, and "Successfully registered model" lines. Errors
    still raise; the register stage says what it registered."""
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
    from mlflow.utils import logging_utils

    from pipeline.tracking.pyfunc import hide_warnings

    # MLflow shows these under its own simplefilter("once"): hidden where warnings are shown
    hide_warnings("An input example was not provided when logging the model")
    stream = logging_utils.MLFLOW_LOGGING_STREAM
    was_enabled, had_bar = stream.enabled, os.environ.get(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name)
    os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = "false"
    stream.enabled = False
    try:
        yield
    finally:
        stream.enabled = was_enabled
        if had_bar is None:
            os.environ.pop(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name, None)
        else:
            os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = had_bar


def _client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def better(
    candidate: float, incumbent: float | None, mode: str, min_improvement: float = 0.0
) -> bool:
    """Whether `candidate` beats `incumbent` by more than `min_improvement` in direction `mode`."""
    if math.isnan(candidate):
        return False
    if incumbent is None or math.isnan(incumbent):
        return True
    if mode == "min":
        return candidate < incumbent - min_improvement
    return candidate > incumbent + min_improvement


def decide(
    rule: PromotionRule,
    candidate: float,
    champion_version: str | None,
    incumbent: float | None,
) -> tuple[bool, str]:
    """(promote?, the reason in words)."""
    name = rule.metric
    if math.isnan(candidate):
        return False, f"{name} is NaN: not promoted"
    if champion_version is None:
        return True, f"first version with {name} = {candidate:.6g} (no champion yet)"
    if incumbent is None or math.isnan(incumbent):
        return True, f"champion v{champion_version} has no {name}; this version has {candidate:.6g}"
    op = "<" if rule.mode == "min" else ">"
    bound = (
        incumbent - rule.min_improvement if rule.mode == "min" else incumbent + rule.min_improvement
    )
    won = better(candidate, incumbent, rule.mode, rule.min_improvement)
    verdict = "beats" if won else "does not beat"
    return won, (
        f"{name} {candidate:.6g} {verdict} champion v{champion_version} ({incumbent:.6g}): "
        f"the rule needs {name} {op} {bound:.6g} ({rule.describe()})"
    )


def _alias_holder(client: MlflowClient, name: str, alias: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def champion_metric(
    client: MlflowClient, name: str, metric: str
) -> tuple[str | None, float | None]:
    version = _alias_holder(client, name, CHAMPION)
    if version is None:
        return None, None
    value = version.tags.get(metric)
    return version.version, float(value) if value is not None else None


def record_alias_change(
    client: MlflowClient,
    name: str,
    version: str,
    alias: str,
    change: str,
    reason: str,
    by: str,
) -> None:
    """Append one alias event to the version's tags."""
    tags = client.get_model_version(name, version).tags
    number = 1 + sum(1 for key in tags if key.startswith(ALIAS_LOG))
    event = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "alias": alias,
        "change": change,
        "reason": reason,
        "by": by,
    }
    client.set_model_version_tag(name, version, f"{ALIAS_LOG}{number:03d}", json.dumps(event))


def move_alias(
    client: MlflowClient, name: str, alias: str, version: str, reason: str, by: str
) -> str | None:
    """Point `alias` at `version`, recording the change on it and on the version that had it."""
    previous = _alias_holder(client, name, alias)
    if previous is not None and str(previous.version) == str(version):
        return str(version)
    client.set_registered_model_alias(name, alias, str(version))
    record_alias_change(client, name, str(version), alias, "set", reason, by)
    if previous is not None:
        record_alias_change(
            client,
            name,
            str(previous.version),
            alias,
            "removed",
            f"@{alias} moved to v{version}: {reason}",
            by,
        )
    return str(previous.version) if previous is not None else None


def alias_history(tracking_uri: str, name: str, version: str | int) -> list[dict[str, Any]]:
    """The alias events of one version, oldest first."""
    tags = _client(tracking_uri).get_model_version(name, str(version)).tags
    return [json.loads(tags[k]) for k in sorted(tags) if k.startswith(ALIAS_LOG)]


def git_commit(folder: Path | None = None) -> dict[str, str]:
    """{"llmpipe.git_commit", "llmpipe.git_dirty"} of the checkout the code runs from, if any."""
    folder = folder or Path(pipeline.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return {"llmpipe.git_commit": "unknown (not a git checkout)"}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {"llmpipe.git_commit": "unknown (git not available)"}
    return {
        "llmpipe.git_commit": commit.stdout.strip(),
        "llmpipe.git_dirty": str(bool(status.stdout.strip())).lower(),
    }


def registered_with_key(client: MlflowClient, name: str, key: str) -> Any | None:
    """The version of `name` an earlier attempt registered under `key`, if any."""
    try:
        found = client.search_model_versions(
            f"name = '{name}' and tags.`{REGISTRATION_KEY}` = '{key}'"
        )
    except MlflowException:  # no such model yet
        return None
    return min(found, key=lambda v: int(v.version)) if found else None


def register_model_dir(
    tracking_uri: str,
    run_id: str,
    model_dir: Path,
    name: str,
    metrics: dict[str, float],
    rule: PromotionRule,
    tags: dict[str, str] | None = None,
    registration_key: str | None = None,
) -> dict[str, Any]:
    """Log `model_dir` as a pyfunc model of `run_id`, register it and apply the promotion rule.

    With `registration_key` (the register stage's fingerprint), a version registered under the
    same key by an interrupted attempt is completed (promotion, aliases) instead of registering
    the model again."""
    if rule.metric not in metrics:
        raise KeyError(
            f"register.metric {rule.metric!r} is not among the eval metrics {sorted(metrics)}"
        )
    client = _client(tracking_uri)
    version = registered_with_key(client, name, registration_key) if registration_key else None
    if version is None:
        version = _log_and_register(
            client, tracking_uri, run_id, model_dir, name, metrics, tags, registration_key
        )
    number = str(version.version)
    all_tags = dict(version.tags)

    previous, incumbent = champion_metric(client, name, rule.metric)
    if f"start_{rule.metric}" in metrics and previous is not None:
        # the champion this run started from, scored on the same held-out documents
        incumbent = float(metrics[f"start_{rule.metric}"])
    value = float(metrics[rule.metric])
    if str(previous) == number:  # an interrupted attempt got as far as @champion
        promoted, reason = True, all_tags.get("llmpipe.promotion", "already the champion")
        return _registered(name, number, promoted, reason, None, None, rule.metric, value)
    promoted, reason = decide(rule, value, previous, incumbent)
    if rule.guard_metric and previous is not None:
        if rule.guard_metric not in metrics:
            raise KeyError(
                f"register.guard_metric {rule.guard_metric!r} is not among the eval metrics "
                f"{sorted(metrics)}"
            )
        _, theirs = champion_metric(client, name, rule.guard_metric)
        mine = float(metrics[rule.guard_metric])
        held = guard_holds(rule, mine, theirs)
        promoted = promoted and held
        reason += (
            f"; {rule.guard_metric} {mine:.6g} against the champion's "
            f"{'n/a' if theirs is None else f'{theirs:.6g}'}: "
            f"{'within' if held else 'outside'} the tolerance {rule.guard_tolerance:.2%}"
        )
    data = all_tags.get("llmpipe.data_fingerprint")
    if previous is not None and data:
        theirs = client.get_model_version(name, previous).tags.get("llmpipe.data_fingerprint")
        if theirs and theirs != data:
            reason += f" [note: champion was evaluated on data {theirs}, this version on {data}]"
    client.set_model_version_tag(name, number, "llmpipe.promotion", reason)
    move_alias(client, name, CHALLENGER, number, f"newest registered version; {reason}", "rule")
    if promoted:
        move_alias(client, name, CHAMPION, number, reason, "rule")
    return _registered(name, number, promoted, reason, previous, incumbent, rule.metric, value)


def _log_and_register(
    client: MlflowClient,
    tracking_uri: str,
    run_id: str,
    model_dir: Path,
    name: str,
    metrics: dict[str, float],
    tags: dict[str, str] | None,
    registration_key: str | None,
) -> Any:
    """Log the model folder as the run's pyfunc model and register it: one new version, created
    with all its tags (the registration key among them) in one registry write."""
    from pipeline.tracking.pyfunc import SIGNATURE  # defining the model class warns: only here

    with _fluent_uris(tracking_uri), mlflow.start_run(run_id=run_id), _quiet_mlflow():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(_ENTRY),
            artifacts={"model_dir": str(model_dir)},
            code_paths=[str(Path(pipeline.__file__).parent)],
            signature=SIGNATURE,
            # Written out instead of inferred: inference would load the model in a subprocess.
            pip_requirements=["torch", "tokenizers", "safetensors", "numpy", "mlflow"],
        )
    flow_run = client.get_run(run_id).data.tags.get("prefect.flow_run_id")
    all_tags = {k: str(v) for k, v in metrics.items()}
    all_tags.update({k: str(v) for k, v in (tags or {}).items()})
    if flow_run:
        all_tags["prefect.flow_run_id"] = flow_run
    if registration_key:
        all_tags[REGISTRATION_KEY] = registration_key
    # not "Successfully registered ...": the stage reports the version
    with _fluent_uris(tracking_uri), _quiet_mlflow():
        return mlflow.register_model(info.model_uri, name, tags=all_tags)


def _registered(
    name: str,
    number: str,
    promoted: bool,
    reason: str,
    previous: str | None,
    incumbent: float | None,
    metric: str,
    value: float,
) -> dict[str, Any]:
    return {
        "model_name": name,
        "version": number,
        "model_uri": f"models:/{name}/{number}",
        "promoted": promoted,
        "reason": reason,
        "previous_champion": previous,
        "previous_champion_metric": incumbent,
        "metric": metric,
        "value": value,
    }


def promote(
    tracking_uri: str,
    name: str,
    version: str | int,
    reason: str | None = None,
    alias: str = CHAMPION,
) -> str | None:
    """Point `alias` (default @champion) at `version` by hand; returns the version that had it."""
    client = _client(tracking_uri)
    client.get_model_version(name, str(version))  # a clear error when it does not exist
    return move_alias(
        client,
        name,
        alias,
        str(version),
        reason or "promoted by hand (llmpipe models promote)",
        "manual",
    )


def is_metric_tag(key: str, value: str) -> bool:
    if key.startswith(NON_METRIC_PREFIXES):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def list_versions(
    tracking_uri: str, name: str | None = None, metrics_only: bool = False
) -> list[dict[str, Any]]:
    """One row per model version: name, version, aliases, run, created, then its tags (all of
    them, or with `metrics_only` just the eval metrics, as floats)."""
    client = _client(tracking_uri)
    names = [name] if name else [m.name for m in client.search_registered_models()]
    rows = []
    for model_name in names:
        aliases: dict[str, list[str]] = {}
        for alias, version in client.get_registered_model(model_name).aliases.items():
            aliases.setdefault(str(version), []).append(alias)
        for version in client.search_model_versions(f"name='{model_name}'"):
            row = {
                "name": model_name,
                "version": int(version.version),
                "aliases": ",".join(sorted(aliases.get(str(version.version), []))),
                "run_id": version.run_id,
                "created": version.creation_timestamp,
            }
            for key, value in version.tags.items():
                if metrics_only:
                    if is_metric_tag(key, value):
                        row[key] = float(value)
                elif not key.startswith(("mlflow.", ALIAS_LOG)):
                    row[key] = value
            rows.append(row)
    return sorted(rows, key=lambda r: (r["name"], r["version"]))
