"""Planning and running the pipeline's stages, without any orchestrator.

In: a validated `PipelineConfig` and a work dir. Out: for each stage, a complete output folder
`<workdir>/<stage>/<fingerprint>/` with its result (see `pipeline.outputs`).

`plan()` computes every stage's fingerprint from its config fields, its code version and the
fingerprints of what it reads, so it knows which outputs already exist before running anything.
It knows no stage by name: each stage object (pipeline/stages/) says whether the config has it,
what it reads and which fields count. `run_stage()` runs one stage into a partial folder under a
lease and publishes it, or returns the existing result when the output is already complete.
Orchestrators (flows/) call these.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig
from pipeline.leases import lease
from pipeline.outputs import StageOutput, StageResult, building, fingerprint, publish
from pipeline.parallel import Executor, SerialExecutor
from pipeline.stages import BY_NAME, STAGE_NAMES, STAGES
from pipeline.stages.base import Log, Stage, StageContext
from pipeline.store import OutputStore
from pipeline.store_lease import LeaseUnsupported, store_lease

LEASE_WAIT_SECONDS = 24 * 3600  # how long a run waits for another run's stage to finish

__all__ = [
    "BY_NAME",
    "STAGES",
    "STAGE_NAMES",
    "PlannedStage",
    "StageContext",
    "UpstreamMissing",
    "check_selection",
    "plan",
    "run_stage",
    "select",
    "stage_names",
]


def stage_names(config: PipelineConfig) -> tuple[str, ...]:
    """The stages this config's pipeline has, in order."""
    return tuple(s.name for s in STAGES if s.included(config))


@dataclass(frozen=True)
class PlannedStage:
    stage: Stage
    output: StageOutput
    config: dict[str, Any]  # the fingerprinted config fields, logged as the stage's params
    upstream: dict[str, StageOutput] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.stage.name


class UpstreamMissing(RuntimeError):
    pass


def _existing(folder: Path, stage: str) -> StageOutput:
    try:
        return StageOutput.at(folder, stage)
    except ValueError as exc:
        raise UpstreamMissing(str(exc)) from None


def plan(
    config: PipelineConfig, workdir: Path, tracking_uri: str | None = None
) -> list[PlannedStage]:
    """Every stage with its fingerprinted output location, in DAG order."""
    planned: dict[str, PlannedStage] = {}
    for stage in STAGES:
        if not stage.included(config):
            continue
        fields = stage.fields(config, tracking_uri)
        given = stage.given_output(config)
        if given is not None:  # an existing output stands in for the stage
            planned[stage.name] = PlannedStage(stage, _existing(given, stage.name), fields, {})
            continue
        reads = stage.reads(config, tracking_uri)
        upstream = {
            name: _existing(reads.outputs[name], name)
            if name in reads.outputs
            else planned[name].output
            for name in reads.stages
        }
        inputs = [f"{name}:{out.fingerprint}" for name, out in upstream.items()]
        inputs += reads.external
        fp = fingerprint(stage.name, stage.version, fields, inputs)
        planned[stage.name] = PlannedStage(
            stage, StageOutput(Path(workdir), stage.name, fp), fields, upstream
        )
    return list(planned.values())


def check_selection(
    included: list[str] | tuple[str, ...], only: list[str] | None = None, start: str | None = None
) -> None:
    """ConfigError when `--only` or `--from` names a stage that is not among `included` (the
    stages of the config's pipeline, `stage_names(config)`)."""
    from difflib import get_close_matches

    from pipeline.config import ConfigError

    for option, names in (("--only", only or []), ("--from", [start] if start else [])):
        for name in names:
            if name in included:
                continue
            if name in BY_NAME:
                raise ConfigError(
                    f"{option} {name}: stage {name!r} is not part of this config's pipeline "
                    f"(its stages: {', '.join(included)})"
                )
            close = get_close_matches(name, included, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"{option} {name}: unknown stage {name!r}; {hint}(stages: {', '.join(included)})"
            )


def select(
    stages: list[PlannedStage], only: list[str] | None = None, start: str | None = None
) -> list[PlannedStage]:
    """The stages to run for `--only a,b` or `--from a` (all of them by default)."""
    check_selection([p.name for p in stages], only, start)
    if only:
        return [p for p in stages if p.name in only]
    if start:
        first = STAGE_NAMES.index(start)
        return [p for p in stages if STAGE_NAMES.index(p.name) >= first]
    return stages


def run_stage(
    planned: PlannedStage,
    config: PipelineConfig,
    tracking_uri: str | None = None,
    mlflow_run_id: str | None = None,
    log: Log = print,
    executor: Executor | None = None,
    store: OutputStore | None = None,
) -> StageResult:
    """Run one stage (or reuse its complete output); return its result.

    With a `store` (a work dir on object storage, pipeline/store.py), the stage's upstream
    outputs and its own come from the store when this machine's cache lacks them, and its
    output is pushed there once complete."""
    output = planned.output
    if store is not None:
        for up in [output, *planned.upstream.values()]:
            store.pull(up)
    if output.complete():
        if store is not None:
            store.push(output)  # a push that crashed after the local publish; else nothing
        return _reused(output)
    missing = [name for name, up in planned.upstream.items() if not up.complete()]
    if missing:
        raise UpstreamMissing(
            f"stage {planned.name!r} needs complete outputs of {', '.join(missing)} "
            f"(expected under {', '.join(str(planned.upstream[m].path) for m in missing)}); run them first"
        )
    started = time.time()
    with _store_lease(store, output, log):
        if store is not None and store.pull(output):  # another machine pushed it meanwhile
            return _reused(output)
        # Another run writing this very output (two runs of one deployment): wait for it, then
        # reuse what it published; a gone run's lease is taken over (pipeline.outputs.lease).
        with building(
            output,
            keep_partial=planned.stage.keep_partial,
            wait_seconds=LEASE_WAIT_SECONDS,
            log=log,
        ) as partial:
            if output.complete():  # another run finished it while we waited for the lease
                return _reused(output)
            executor = executor or SerialExecutor()
            if store is not None and getattr(executor, "remote", False):
                from pipeline.store_units import StoreUnits

                executor = StoreUnits(executor, store, output)  # its units meet through the store
            ctx = StageContext(
                config=config,
                inputs={name: up.path for name, up in planned.upstream.items()},
                out=partial,
                tracking_uri=tracking_uri,
                mlflow_run_id=mlflow_run_id,
                log=log,
                executor=executor,
                fingerprint=output.fingerprint,
            )
            result = planned.stage.run(ctx)
            result.config = planned.config
            result.inputs = {name: up.fingerprint for name, up in planned.upstream.items()}
            result.code_version = planned.stage.version
            result.seconds = round(time.time() - started, 3)
            result.finished_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            publish(output, result)
        if store is not None:
            store.push(output)
    return output.result()


@contextmanager
def _store_lease(store: OutputStore | None, output: StageOutput, log: Log) -> Iterator[None]:
    """Hold the output's lease on the store while it is computed and pushed, so that two
    machines that start it at once do not both compute it (pipeline/store_lease.py)."""
    if store is None:
        yield
        return
    unleased = "machines that start this stage at once each compute it"
    place = store_lease(store, output)
    with ExitStack() as held:
        if place is None:
            log(
                f"{store.url}: this store keeps no leases (conditional writes: s3:// only); {unleased}"
            )
        else:
            try:
                held.enter_context(lease(place, LEASE_WAIT_SECONDS, log))
            except LeaseUnsupported as exc:
                log(f"no lease on the store: {exc}; {unleased}")
        yield


def _reused(output: StageOutput) -> StageResult:
    result = output.result()
    result.reused = True
    return result
