"""Server mode for the tests: the stack of flows/stack.py and one pipeline run through it.

`start_stack()` starts PostgreSQL, the Prefect server and the MLflow server on 127.0.0.1 (as
`python -m flows.stack up` does). `run_deployment_on_stack()` does what a service does every
night: `prefect deploy` of prefect.yaml, a run of that deployment (the quickstart, shrunk with
the same overrides as tests/test_pipeline_e2e.py), executed by a Prefect process worker with
the same command as the compose file's worker, with credentials in the worker's environment.
The session fixtures that use these live in conftest.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from flows.stack import SERVER_COMMANDS, Stack, free_port

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "served-gpt"


@dataclass
class ServedRun:
    stack: Stack
    flow_run_id: str
    flow_run_name: str
    workdir: Path
    mlflow_uri: str  # without credentials, for the test's own MLflow client
    secrets: dict[str, str] = field(default_factory=dict)  # env name -> secret value
    worker_log: str = ""
    deploy_log: str = ""


def start_stack() -> Stack:
    # Not pytest's tmp_path: its parents are private to root, and PostgreSQL runs as `postgres`.
    stack = Stack(Path(tempfile.mkdtemp(prefix="llmpipe-stack-")))
    try:
        return stack.up()
    except BaseException:
        stop_stack(stack)
        raise


def stop_stack(stack: Stack) -> None:
    stack.down()
    shutil.rmtree(stack.state, ignore_errors=True)


def _bin(name: str) -> str:
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def _command(service: str, *extra: str) -> list[str]:
    command = SERVER_COMMANDS[service]
    return [_bin(command[0]), *command[1:], *extra]


def run_deployment_on_stack(stack: Stack, shrink: list[str], scratch: Path) -> ServedRun:
    """Deploy prefect.yaml, start one run of it, and let a worker run it to the end."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    client_env = stack.client_env()
    # Credentials a real worker would hold: in the tracking URI (user:password@), in MLflow's
    # and S3's variables. None of them may show up in what MLflow or Prefect record.
    found = {
        "uri_password": "uri-" + secrets.token_hex(8),
        "MLFLOW_TRACKING_PASSWORD": "mlflow-" + secrets.token_hex(8),
        "AWS_SECRET_ACCESS_KEY": "aws-" + secrets.token_hex(8),
        "LLMPIPE_DB_PASSWORD": stack._password(),
    }
    uri_with_credentials = client_env["MLFLOW_TRACKING_URI"].replace(
        "http://", f"http://llmpipe:{found['uri_password']}@"
    )
    home = scratch / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **client_env,
        "PREFECT_HOME": str(home),
        "MLFLOW_TRACKING_URI": uri_with_credentials,
        "MLFLOW_TRACKING_USERNAME": "llmpipe",
        "MLFLOW_TRACKING_PASSWORD": found["MLFLOW_TRACKING_PASSWORD"],
        "AWS_ACCESS_KEY_ID": "llmpipe-test",
        "AWS_SECRET_ACCESS_KEY": found["AWS_SECRET_ACCESS_KEY"],
        "LLMPIPE_DB_PASSWORD": found["LLMPIPE_DB_PASSWORD"],
        "PREFECT_WORKER_WEBSERVER_PORT": str(free_port()),
        # `sh -c "prefect ..."` (the deploy command) finds this environment's programs.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    # 1. Register the deployments of prefect.yaml, as the compose file's `deploy` service does.
    deploy = subprocess.run(
        _command("deploy"), cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    if deploy.returncode != 0:
        raise RuntimeError(
            f"prefect deploy failed:\n{deploy.stdout[-3000:]}{deploy.stderr[-3000:]}"
        )

    # 2. One run of it now, shrunk, in a work dir of its own.
    workdir = scratch / "work"
    parameters = {
        "workdir": str(workdir),
        "overrides": [*shrink, f"register.model_name={MODEL_NAME}"],
    }

    async def start_run():
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("llmpipe/quickstart")
            return await client.create_flow_run_from_deployment(
                deployment.id, parameters=parameters
            )

    with temporary_settings({PREFECT_API_URL: client_env["PREFECT_API_URL"]}):
        flow_run = asyncio.run(start_run())

    # 3. A worker, started elsewhere than the repository: the deployment's pull step finds it.
    worker = subprocess.run(
        _command("prefect-worker", "--run-once"),
        cwd=scratch,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )

    async def read_run():
        async with get_client() as client:
            return await client.read_flow_run(flow_run.id)

    with temporary_settings({PREFECT_API_URL: client_env["PREFECT_API_URL"]}):
        finished = asyncio.run(read_run())
    log = worker.stdout + worker.stderr
    if not finished.state or not finished.state.is_completed():
        raise RuntimeError(
            f"the deployment's run ended {finished.state and finished.state.name}; "
            f"worker log:\n{log[-6000:]}"
        )
    return ServedRun(
        stack=stack,
        flow_run_id=str(flow_run.id),
        flow_run_name=finished.name,
        workdir=workdir,
        mlflow_uri=client_env["MLFLOW_TRACKING_URI"],
        secrets=found,
        worker_log=log,
        deploy_log=deploy.stdout + deploy.stderr,
    )


def mlflow_parent_run(served: ServedRun):
    """The MLflow parent run of the served flow run (found by its Prefect tag)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=served.mlflow_uri, registry_uri=served.mlflow_uri)
    experiment = client.get_experiment_by_name("llmpipe")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`prefect.flow_run_id` = '{served.flow_run_id}'",
    )
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    return client, parents[0]


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)
