"""Where the data stages' units of work run: this process, local processes, or a Dask cluster.

In: the config's `execution` section. Out: for the flow, a started prefect-dask
`DaskTaskRunner` (or None) that the data-stage tasks are submitted to; for a stage task, an
executor (pipeline/parallel.py) whose `map` runs the stage's units.

With `execution.runner: dask`, the flow starts a `DaskTaskRunner` on a local cluster of
`execution.workers` worker processes (one thread each), or connects to the scheduler at
`execution.dask_address`. The data stages (those with `Stage.on_dask`) are submitted to it, so each runs as
a Prefect task on a Dask worker; inside, `prefect_dask.get_dask_client()` gives a client of the
same cluster and the stage's units are mapped over all its workers (`DaskExecutor`). Other
stages (training launches its own process) run in the flow's process as before. Stage outputs
are files: a remote cluster's workers need the work dir on a shared file system or on object
storage (`workdir: s3://...`, pipeline/store.py: each worker pulls and pushes outputs, and the
units of one stage push their parts, pipeline/store_units.py).
`dashboard_link` gives the cluster's Dask dashboard, which the flow links as a Prefect artifact.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.states import State

from pipeline.config import ExecutionConfig
from pipeline.parallel import DaskExecutor, make_executor
from pipeline.stages.base import Stage


def open_task_runner(execution: ExecutionConfig) -> Any | None:
    """A started `DaskTaskRunner` when the config asks for Dask, else None."""
    if execution.runner != "dask":
        return None
    from prefect_dask import DaskTaskRunner

    if execution.dask_address:
        runner = DaskTaskRunner(address=execution.dask_address)
    else:
        runner = DaskTaskRunner(
            cluster_kwargs={
                "n_workers": execution.workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,  # no web server needed; none to collide with
            }
        )
    return runner.__enter__()


def dashboard_link(runner: Any | None) -> str | None:
    """The Dask dashboard of the runner's cluster; None when there is no runner or the scheduler
    serves no dashboard (the local cluster starts none; a scheduler without bokeh has none)."""
    if runner is None:
        return None
    client = runner.client
    info = client.scheduler_info()
    if "dashboard" not in info.get("services", {}):
        return None
    return client.dashboard_link or None


def close_task_runner(runner: Any | None) -> None:
    if runner is not None:
        runner.__exit__(None, None, None)


def run_on(runner: Any | None, stage: Stage, task: Any, parameters: dict[str, Any]) -> State:
    """Run a stage task: submitted to the Dask runner for data stages (`stage.on_dask`), else in
    this process; returns its final state either way."""
    if runner is None or not stage.on_dask:
        return task(**parameters, return_state=True)
    future = runner.submit(task, parameters=parameters)
    future.wait()
    return future.state


@contextmanager
def stage_executor(execution: ExecutionConfig) -> Iterator[Any]:
    """The executor a stage task maps its units with (see the module docstring)."""
    if execution.runner == "dask":
        from distributed import get_worker
        from prefect_dask import get_dask_client

        try:
            get_worker()
        except ValueError:  # a task in the flow's process (not a data stage): stay local
            with make_executor(execution.workers) as executor:
                yield executor
            return
        with get_dask_client() as client:
            yield DaskExecutor(client)
        return
    with make_executor(execution.workers) as executor:
        yield executor
