"""Deployments: `llmpipe serve CONFIG --cron ...` and prefect.yaml make the same scheduled
deployment of the pipeline flow, with parameters from the config; served, it runs.

Against the session's Prefect test server: the deployment is created (as `serve` does), read
back from the API (schedule, parameters, one-at-a-time limit), started once with a partial
run (ingest only, to stay fast) and run to completion by the same runner `serve` uses.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.cli import build_parser, main
from flows.deploy import pipeline_deployment, serve_pipeline

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def _read(reader):
    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            return await reader(client)

    return asyncio.run(read())


def test_serve_command_line():
    args = build_parser().parse_args(
        ["serve", str(QUICKSTART), "--cron", "30 2 * * 1-5", "--timezone", "Europe/Paris"]
    )
    assert (args.cron, args.timezone, args.run_once) == ("30 2 * * 1-5", "Europe/Paris", False)
    assert build_parser().parse_args(["serve", str(QUICKSTART)]).cron == "0 3 * * *"


def test_serve_refuses_a_bad_config_before_any_server(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [{type: jsonl, path: x.jsonl}]\ntrain: {max_stepz: 3}\n")
    assert main(["serve", str(bad)]) == 2
    assert "train.max_stepz: unknown key" in capsys.readouterr().err


def test_deployment_is_scheduled_with_the_configs_parameters(prefect_server, tmp_path):
    deployment = pipeline_deployment(
        QUICKSTART,
        cron="0 3 * * *",
        workdir=str(tmp_path / "work"),
        overrides=["train.max_steps=7"],
    )
    deployment_id = deployment.apply()
    stored = _read(lambda client: client.read_deployment(deployment_id))
    assert stored.name == "quickstart"
    assert stored.entrypoint == "flows.pipeline.pipeline_flow"
    assert [(s.schedule.cron, s.schedule.timezone) for s in stored.schedules] == [
        ("0 3 * * *", "UTC")
    ]
    assert stored.parameters == {
        "config_path": str(QUICKSTART),
        "workdir": str(tmp_path / "work"),
        "overrides": ["train.max_steps=7"],
    }
    assert stored.global_concurrency_limit.limit == 1
    assert set(stored.tags) == {"llmpipe", "quickstart"}


def test_served_deployment_runs_what_is_due(prefect_server, tmp_path):
    from prefect.deployments import run_deployment

    workdir = tmp_path / "work"
    deployment = pipeline_deployment(QUICKSTART, cron="0 3 * * *", workdir=str(workdir))
    deployment.apply()
    flow_run = run_deployment(
        "llmpipe/quickstart", parameters={"only": ["ingest"]}, timeout=0
    )  # due now
    serve_pipeline(deployment, run_once=True)
    finished = _read(lambda client: client.read_flow_run(flow_run.id))
    assert finished.state.is_completed(), finished.state
    assert re.fullmatch(
        r"quickstart · full, only ingest · \d{4}-\d\d-\d\d \d\d:\d\d UTC", finished.name
    )
    outputs = [p for p in (workdir / "ingest").iterdir() if (p / "_manifest.json").is_file()]
    assert len(outputs) == 1
    assert not (workdir / "clean").exists()


def test_prefect_yaml_declares_the_same_deployment():
    declared = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (entry,) = declared["deployments"]
    made = pipeline_deployment(REPO / entry["parameters"]["config_path"])
    assert entry["name"] == made.name
    assert entry["entrypoint"] == made.entrypoint
    assert [(s["cron"], s["timezone"]) for s in entry["schedules"]] == [
        (s.schedule.cron, s.schedule.timezone) for s in made.schedules
    ]
    assert entry["concurrency_limit"]["limit"] == made.concurrency_limit == 1
    assert (
        entry["concurrency_limit"]["collision_strategy"]
        == made.concurrency_options.collision_strategy
        == "ENQUEUE"
    )
    assert set(entry["tags"]) == set(made.tags)
    assert entry["work_pool"]["name"] == "llmpipe"
    # prefect.yaml's relative path and serve's absolute one name the same config.
    assert (REPO / entry["parameters"]["config_path"]).resolve() == Path(
        made.parameters["config_path"]
    )


@pytest.mark.slow
def test_two_runs_at_once_share_outputs_and_ignore_a_crashed_runs_leftovers(
    prefect_server, tmp_path
):
    """A manual run beside a scheduled one, in one work dir: the stage leases keep them apart
    (one writes, the other waits and reuses), and what a killed run left is never an output."""
    from prefect.settings import PREFECT_API_URL

    from pipeline.config import load_config
    from pipeline.dag import plan

    workdir = tmp_path / "work"
    ingest = {p.name: p for p in plan(load_config(QUICKSTART), workdir)}["ingest"].output
    # A killed run's leftovers: a half-written partial folder and its dead owner's lease.
    ingest.partial.mkdir(parents=True)
    (ingest.partial / "part-00000.parquet").write_bytes(b"half a file")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    ingest.lease.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    command = [
        sys.executable,
        "-m",
        "flows.cli",
        "run",
        str(QUICKSTART),
        "--workdir",
        str(workdir),
        "--only",
        "ingest,clean",
    ]
    runs = [
        subprocess.Popen(
            command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], "\n".join(outputs)
    for stage in ("ingest", "clean"):
        folders = sorted(p.name for p in (workdir / stage).iterdir())
        complete = [f for f in folders if (workdir / stage / f / "_manifest.json").is_file()]
        assert len(complete) == 1 and folders == complete, folders  # no partial, no lease left
    assert not (ingest.path / "part-00000.parquet").read_bytes().startswith(b"half")
    summaries = [re.search(r"Pipeline finished .*\((.*)\)", out).group(1) for out in outputs]
    # One writer per output: for each stage one run ran it, the other reused its output
    # (after waiting for the lease, or after the first run had finished).
    for stage in ("ingest", "clean"):
        states = sorted(re.search(rf"{stage} (ran|cached)", s).group(1) for s in summaries)
        assert states == ["cached", "ran"], summaries
