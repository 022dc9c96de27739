"""The data stages on a Dask cluster started the way a cluster is: `dask scheduler` and two
`dask worker` processes (one thread each) started here as separate processes on 127.0.0.1, the
flow connecting by `execution.dask_address`.

In: the quickstart sample, in small shards. Out: checks that ingest, clean and dedup give the
same documents as one process; that the Prefect API holds the Dask-run stage tasks and a link
artifact to the scheduler's dashboard (which answers); and that a worker SIGKILLed while clean's
units run costs nothing: the scheduler runs the lost units again on the other worker, inside
the same Prefect task run (no Prefect retry, no rerun), and so does a worker killed while it
runs the stage's task itself (Dask runs the task again elsewhere; it takes over the lease).
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from cluster_helpers import Cluster

from flows.pipeline import pipeline_flow
from pipeline.config import load_config
from pipeline.dag import plan, run_stage, select
from pipeline.documents import iter_documents
from pipeline.outputs import read_manifest
from pipeline.quarantine import read_quarantine

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
DATA_STAGES = ["ingest", "clean", "dedup"]
# Small shards, so that each stage has several units of work to spread over the workers.
SMALL_SHARDS = ["ingest.max_docs_per_shard=120", "dedup.repeated_spans=paragraphs"]
CLEAN_UNIT = "clean_shard"  # the clean stage's unit function: its Dask keys start so


@pytest.fixture
def cluster(tmp_path):
    started = Cluster(tmp_path / "cluster")
    try:
        started.wait(2)
        yield started
    except BaseException:
        print(started.log_tail())
        raise
    finally:
        started.stop()


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, Path]:
    """The data stages as the flow's tasks run them, in this process, without orchestration."""
    config = load_config(QUICKSTART, [*SMALL_SHARDS, "execution.workers=1"])
    outputs = {}
    for planned in select(plan(config, tmp_path_factory.mktemp("local")), only=DATA_STAGES):
        run_stage(planned, config, log=lambda _: None)
        outputs[planned.name] = planned.output.path
    return outputs


def _run_on(cluster: Cluster, workdir: Path):
    state = pipeline_flow(
        QUICKSTART,
        workdir=str(workdir),
        overrides=[
            *SMALL_SHARDS,
            "execution.runner=dask",
            f"execution.dask_address={cluster.address}",
        ],
        only=DATA_STAGES,
        return_state=True,
    )
    return state.result(), state.state_details.flow_run_id


def _same_output(ours: dict[str, Path], summary: dict) -> None:
    for name in DATA_STAGES:
        theirs = Path(summary["stages"][name]["output"])
        assert ours[name].name == theirs.name  # the same fingerprint: same config
        documents = list(iter_documents(ours[name]))
        assert documents, name
        assert documents == list(iter_documents(theirs)), name
        assert read_quarantine(ours[name]) == read_quarantine(theirs), name
        files = sorted(p.name for p in ours[name].iterdir() if p.name != "_manifest.json")
        assert files == sorted(p.name for p in theirs.iterdir() if p.name != "_manifest.json")
        for table in files:
            if table.endswith(".parquet") and not table.startswith("part-"):
                import pyarrow.parquet as pq

                assert pq.read_table(ours[name] / table) == pq.read_table(theirs / table), table


def _prefect_records(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
    )

    async def read():
        async with get_client() as client:
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
                )
            )
            tasks = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            return artifacts, tasks

    return asyncio.run(read())


def _task_logs(task_run_id, wait_seconds: float = 30.0) -> list[str]:
    """The task run's log lines in the Prefect API (workers send theirs every few seconds)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    async def read():
        async with get_client() as client:
            logs = await client.read_logs(
                log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id]))
            )
            return [log.message for log in logs]

    deadline = time.monotonic() + wait_seconds
    while True:
        lines = asyncio.run(read())
        if any("taking over" in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(1)


@pytest.mark.dask
@pytest.mark.slow  # ~1 min: .ci/run runs it
def test_data_stages_on_a_started_cluster_match_one_process(cluster, one_process, tmp_path):
    summary, flow_run_id = _run_on(cluster, tmp_path / "work")
    assert list(summary["stages"]) == DATA_STAGES
    for name in ("clean", "dedup"):
        assert summary["stages"][name]["phases"]["executor"] == "DaskExecutor(2)"
        assert summary["stages"][name]["phases"]["units"] > 1
    _same_output(one_process, summary)

    artifacts, tasks = _prefect_records(flow_run_id)
    # The UI's task list: each data stage a task run of this flow run, completed on Dask.
    stage_runs = {t.name: t for t in tasks if t.name in DATA_STAGES}
    assert set(stage_runs) == set(DATA_STAGES)
    assert all(t.state.is_completed() for t in stage_runs.values())
    # The dashboard link, as a link artifact of the run, and the dashboard behind it answers.
    links = [a for a in artifacts if a.key == "llmpipe-dask-dashboard"]
    assert len(links) == 1  # Prefect stores a link artifact as markdown: [text](url)
    assert f"(http://127.0.0.1:{cluster.dashboard_port}/status)" in links[0].data
    with urllib.request.urlopen(cluster.dashboard, timeout=30) as response:
        assert response.status == 200


class KillMidStage(threading.Thread):
    """Watches the scheduler; once the clean stage's units run on the worker that does not run
    the stage's Prefect task, SIGKILLs (nanny and worker) that worker (`victim="units"`) or the
    one running the stage's task (`victim="stage"`), and records the units the victim held."""

    def __init__(self, cluster: Cluster, victim: str):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.victim = victim
        self.killed: str | None = None
        self.lost_units: list[str] = []
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self._watch()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _watch(self) -> None:
        from distributed.utils import key_split

        with self.cluster.client() as client:
            names = {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}
            while not self.done.is_set():
                processing, memory = client.processing(), client.has_what()
                held = {
                    name: [
                        str(k)
                        for k in [*processing.get(a, ()), *memory.get(a, ())]
                        if key_split(k) == CLEAN_UNIT
                    ]
                    for name, a in names.items()
                }
                # the worker running the stage's Prefect task (prefect-dask keys it by its name)
                stage_worker = {
                    name
                    for name, a in names.items()
                    for k in processing.get(a, ())
                    if key_split(k) == "stage_task"
                }
                others = [n for n in names if n not in stage_worker and held[n]]
                if stage_worker and others:
                    self.killed = others[0] if self.victim == "units" else min(stage_worker)
                    self.lost_units = held[self.killed]
                    self.cluster.kill(self.killed)
                    return
                time.sleep(0.05)


@pytest.mark.dask
@pytest.mark.slow  # ~1 min each: .ci/run runs them
@pytest.mark.parametrize("victim", ["units", "stage"])
def test_a_worker_killed_mid_stage_costs_nothing(cluster, one_process, tmp_path, victim):
    """`units`: the worker killed runs some of clean's units: the scheduler runs them again on
    the other worker, inside the same stage task. `stage`: the worker killed runs the stage's
    Prefect task itself: the scheduler runs the task again on the other worker, which takes over
    the dead owner's lease and runs the stage again from an empty partial folder."""
    killer = KillMidStage(cluster, victim)
    killer.start()
    try:
        summary, flow_run_id = _run_on(cluster, tmp_path / "work")
    finally:
        killer.done.set()
        killer.join(timeout=30)
    assert killer.error is None, killer.error
    assert killer.killed, "no worker was killed: clean's units never ran beside the stage task"
    print(f"killed {killer.killed} ({victim}) holding clean units {killer.lost_units}")
    if victim == "units":
        assert killer.lost_units
    assert cluster.workers[killer.killed].returncode == -signal.SIGKILL
    with cluster.client() as client:
        assert len(client.scheduler_info()["workers"]) == 1
    _same_output(one_process, summary)
    # One task run for the stage, completed (Prefect sees no retry: Dask reran the work).
    _, tasks = _prefect_records(flow_run_id)
    clean = [t for t in tasks if t.name == "clean"]
    assert len(clean) == 1 and clean[0].state.is_completed()
    assert clean[0].run_count == 1
    if victim == "stage":  # the surviving worker's run took the dead worker's lease over
        assert any("taking over from" in line for line in _task_logs(clean[0].id)), "no takeover"
    for name in DATA_STAGES:
        assert summary["stages"][name]["counts"] == read_manifest(one_process[name])["counts"]
