"""Server mode: the quickstart as a service, on real servers.

PostgreSQL, the Prefect server and the MLflow server run on 127.0.0.1 (flows/stack.py, the
same commands as docker/compose.yaml); `prefect deploy` registers prefect.yaml's deployment;
a Prefect process worker runs one (shrunk) run of it with credentials in its environment.
Checks: the run completed with a readable name and the deployment's schedule; both servers
keep their records in PostgreSQL and MLflow's artifacts in its own store; the champion loads
through the server; and no credential appears anywhere MLflow or Prefect stored anything.

Slow (about 1.5 minutes); skipped without PostgreSQL. `.ci/run` runs it.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from server_helpers import MODEL_NAME, REPO, mlflow_parent_run

from pipeline.config import load_config
from pipeline.dag import stage_names

pytestmark = pytest.mark.slow
STAGE_NAMES = stage_names(load_config(REPO / "configs" / "quickstart.yaml"))


def _prefect(served, reader):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read():
        async with get_client() as client:
            return await reader(client)

    with temporary_settings({PREFECT_API_URL: served.stack.client_env()["PREFECT_API_URL"]}):
        return asyncio.run(read())


def test_the_scheduled_deployment_ran_to_completion(served_run):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read(client):
        deployment = await client.read_deployment_by_name("llmpipe/quickstart")
        tasks = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[served_run.flow_run_id]))
        )
        return deployment, tasks

    deployment, tasks = _prefect(served_run, read)
    assert deployment.entrypoint == "flows.pipeline.pipeline_flow"
    assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
    assert deployment.work_pool_name == "llmpipe"
    # prefect deploy recorded the repository as the working directory of the worker's runs.
    pull = json.dumps(deployment.pull_steps)
    assert str(REPO) in pull
    assert re.fullmatch(
        r"quickstart · full · \d{4}-\d\d-\d\d \d\d:\d\d UTC", served_run.flow_run_name
    )
    assert sorted(t.name for t in tasks) == sorted(STAGE_NAMES)
    assert all(t.state.is_completed() for t in tasks)


def test_both_servers_keep_their_records_in_postgresql(served_run):
    stack = served_run.stack
    _, parent = mlflow_parent_run(served_run)
    run_ids = stack.psql("mlflow", "SELECT run_uuid FROM runs").split()
    assert parent.info.run_id in run_ids
    assert len(run_ids) >= 1 + len(STAGE_NAMES)
    assert MODEL_NAME in stack.psql("mlflow", "SELECT name FROM registered_models").split()
    flow_run = stack.psql(
        "prefect", f"SELECT name FROM flow_run WHERE id = '{served_run.flow_run_id}'"
    )
    assert flow_run == served_run.flow_run_name
    assert int(stack.psql("prefect", "SELECT count(*) FROM task_run")) >= len(STAGE_NAMES)


def test_artifacts_live_in_the_servers_artifact_store(served_run):
    client, parent = mlflow_parent_run(served_run)
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:/")
    store = served_run.stack.artifacts
    stored = {p.name for p in store.rglob("*") if p.is_file()}
    assert {"loss_curve.png", "eval_summary.png", "tokenizer.json", "model.safetensors"} <= stored
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/loss_curve.png", "plots/eval_summary.png"}
    # The client kept no copy: a tracking server stores artifacts, not the worker's disk.
    assert not (served_run.workdir / "mlartifacts").exists()


def test_the_champion_loads_through_the_server(served_run):
    import mlflow

    client, parent = mlflow_parent_run(served_run)
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert float(champion.tags["val_bpb"]) == pytest.approx(parent.data.metrics["val_bpb"])
    assert "val_bpb" in champion.description and "promoted to @champion" in champion.description
    mlflow.set_tracking_uri(served_run.mlflow_uri)
    mlflow.set_registry_uri(served_run.mlflow_uri)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    texts = model.predict(["The history of"], params={"max_new_tokens": 5, "seed": 1})
    assert texts[0].startswith("The history of")


def test_no_credential_reaches_what_mlflow_or_prefect_stored(served_run):
    """Everything both servers stored (their databases, MLflow's artifact store) and the
    worker's log is searched for each credential the worker held."""
    stack = served_run.stack
    assert served_run.secrets["uri_password"] not in served_run.mlflow_uri
    stored = {
        "MLflow database": stack.pg_dump("mlflow"),
        "Prefect database": stack.pg_dump("prefect"),
        "worker log": served_run.worker_log,
    }
    for path in stack.artifacts.rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            stored[f"artifact {path.relative_to(stack.artifacts)}"] = path.read_bytes().decode(
                "utf-8", errors="replace"
            )
    # The databases really hold the run (else the search proves nothing).
    assert served_run.flow_run_id in stored["Prefect database"]
    assert "train.max_steps" in stored["MLflow database"]
    assert any(name.endswith("train_request.json") for name in stored)
    leaks = [
        f"{secret_name} in {where}"
        for secret_name, value in served_run.secrets.items()
        for where, text in stored.items()
        if value in text
    ]
    assert leaks == []


def test_the_servers_logs_hold_no_database_password(served_run):
    password = served_run.secrets["LLMPIPE_DB_PASSWORD"]
    for log in Path(served_run.stack.state).glob("*.log"):
        assert password not in log.read_text(errors="replace"), log.name
