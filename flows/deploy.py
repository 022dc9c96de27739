"""Deployments of the pipeline flow: a schedule and parameters from a config, served or applied.

In: a config file (plus `--set` overrides), a cron schedule and its time zone. Out: a Prefect
deployment named after the config (`llmpipe/<config name>`) whose runs call `pipeline_flow`
with that config, and either
- `serve_pipeline`: a long-lived process that creates the scheduled runs and runs them itself
  (`llmpipe serve CONFIG --cron "0 3 * * *"`, no work pool needed); or
- `pipeline_deployment(...).apply()` with a work pool: a worker runs them
  (`prefect worker start --pool llmpipe`); `prefect.yaml` at the repository root declares the
  same deployment for `prefect deploy`.

One run of a deployment at a time (`concurrency_limit=1`, later runs wait in the queue): a
nightly run that overruns does not race the next one. Two runs that do meet anyway (a manual
run beside a scheduled one) are kept apart by the stage leases (pipeline.outputs).
The parameters hold paths and overrides, never credentials: Prefect stores and shows them.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

DEFAULT_CRON = "0 3 * * *"


def pipeline_parameters(
    config_path: str | Path, workdir: str | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """The flow parameters of a deployment: absolute paths, so any working directory works."""
    from pipeline.config import load_config

    config = load_config(config_path, overrides or [])  # a bad config fails here, not at 3 am
    return {
        "config_path": str(Path(config_path).resolve()),
        "workdir": str(Path(workdir or config.workdir).resolve()),
        "overrides": list(overrides or []),
    }


def pipeline_deployment(
    config_path: str | Path,
    cron: str | None = DEFAULT_CRON,
    timezone: str = "UTC",
    name: str | None = None,
    workdir: str | None = None,
    overrides: list[str] | None = None,
    work_pool: str | None = None,
):
    """A `RunnerDeployment` of the pipeline flow for one config (not yet sent to the API)."""
    from pipeline.config import load_config

    config = load_config(config_path, overrides or [])  # before the (slow) Prefect imports
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from flows.pipeline import pipeline_flow

    return pipeline_flow.to_deployment(
        name=name or config.name,
        schedule=Cron(cron, timezone=timezone) if cron else None,
        parameters=pipeline_parameters(config_path, workdir, overrides),
        tags=["llmpipe", config.name],
        description=f"llmpipe pipeline `{config.name}` ({Path(config_path).name})",
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy="ENQUEUE"),
        work_pool_name=work_pool,
        # `flows.pipeline.pipeline_flow`: importable from any working directory.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def serve_pipeline(deployment, run_once: bool = False) -> None:
    """Serve the deployment: create its scheduled runs and run them in this process's host.

    `run_once`: run what is due now (scheduled or started from the UI), then return.
    """
    from prefect.runner import Runner
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        print(
            "warning: PREFECT_API_URL is not set; schedules need a running Prefect server "
            "(prefect server start, then export PREFECT_API_URL=http://127.0.0.1:4200/api)",
            file=sys.stderr,
        )
    runner = Runner(name=f"llmpipe-{deployment.name}", pause_on_shutdown=False, limit=1)
    runner.add_deployment(deployment)
    schedule = ", ".join(s.schedule.cron for s in deployment.schedules or [] if s.schedule)
    print(
        f"Serving deployment 'llmpipe/{deployment.name}' "
        f"({'schedule ' + schedule if schedule else 'no schedule'}); "
        f"start a run now with: prefect deployment run 'llmpipe/{deployment.name}'",
        flush=True,
    )
    asyncio.run(runner.start(run_once=run_once))
