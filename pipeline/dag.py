"""The stages of the pipeline and how one stage runs, without any orchestrator.

In: a validated `PipelineConfig` and a work dir. Out: for each stage, a complete output folder
`<workdir>/<stage>/<fingerprint>/` with its `_manifest.json` (see `pipeline.outputs`).

`plan()` computes every stage's fingerprint from its config fields, its code version and its
upstream fingerprints, so it knows which outputs already exist before running anything.
`run_stage()` runs one stage into a partial folder under a lease and publishes it, or returns the
existing manifest when the output is already complete. Orchestrators (flows/) call these.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig, fingerprint_fields
from pipeline.outputs import StageOutput, building, fingerprint, publish
from pipeline.parallel import Executor, SerialExecutor

Log = Callable[[str], None]


@dataclass(frozen=True)
class StageContext:
    config: PipelineConfig
    inputs: dict[str, Path]  # upstream stage name -> its complete output folder
    out: Path  # the partial folder to write into
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None  # this stage's MLflow run, for stages that log themselves
    log: Log = print
    executor: Executor = field(default_factory=SerialExecutor)  # runs a stage's units of work


@dataclass(frozen=True)
class Stage:
    name: str
    version: int  # bump when the stage's output for the same inputs would change
    upstream: tuple[str, ...]
    sections: tuple[str, ...]  # config sections whose output-changing fields go in the fingerprint
    run: Callable[[StageContext], dict[str, Any]]
    keep_partial: bool = False  # resume from a killed attempt's files (training checkpoints)
    external: Callable[[PipelineConfig, str | None], list[str]] | None = None

    def config_fields(self, config: PipelineConfig) -> dict[str, Any]:
        return {s: fingerprint_fields(getattr(config, s)) for s in self.sections}


# --------------------------------------------------------------------------- stage adapters


def _ingest(ctx: StageContext) -> dict[str, Any]:
    from pipeline.ingest import run_ingest

    cfg = ctx.config
    return run_ingest(cfg.sources, cfg.base_dir, ctx.out, cfg.ingest.max_docs_per_shard)


def _ingest_inputs(config: PipelineConfig, tracking_uri: str | None) -> list[str]:
    from pipeline.ingest import source_input_fingerprint

    return source_input_fingerprint(config.sources, config.base_dir)


def _clean(ctx: StageContext) -> dict[str, Any]:
    from pipeline.clean import run_clean

    return run_clean(ctx.inputs["ingest"], ctx.out, ctx.config.clean)


def _dedup(ctx: StageContext) -> dict[str, Any]:
    from pipeline.dedup import run_dedup

    return run_dedup(ctx.inputs["clean"], ctx.out, ctx.config.dedup)


def _tokenizer(ctx: StageContext) -> dict[str, Any]:
    from pipeline.tokenizer import train_tokenizer

    return train_tokenizer(ctx.inputs["dedup"], ctx.out, ctx.config.tokenizer)


def _shards(ctx: StageContext) -> dict[str, Any]:
    from pipeline.tokenizer import write_token_shards

    tokenizer = ctx.inputs["tokenizer"] / "tokenizer.json"
    return write_token_shards(ctx.inputs["dedup"], tokenizer, ctx.out, ctx.config.shards)


def _pretrain(ctx: StageContext) -> dict[str, Any]:
    from pipeline.train.request import TrainRequest

    shards = json.loads((ctx.inputs["shards"] / "_manifest.json").read_text())
    request = TrainRequest(
        model=ctx.config.model.model_dump(mode="json"),
        train=ctx.config.train.model_dump(mode="json"),
        vocab_size=int(shards["stats"]["vocab_size"]),
        eot_id=int(shards["stats"]["eot_id"]),
        shards_dir=str(ctx.inputs["shards"]),
        out_dir=str(ctx.out),
        tokenizer_path=str(ctx.inputs["tokenizer"] / "tokenizer.json"),
        mlflow_tracking_uri=ctx.tracking_uri,
        mlflow_run_id=ctx.mlflow_run_id,
        bytes_per_token_val=float(shards["stats"]["bytes_per_token_val"]),
    )
    request_path = ctx.out / "train_request.json"
    request.to_json(request_path)
    launch_training(request_path, ctx.log)
    metrics = json.loads((ctx.out / "train_metrics.json").read_text())
    return {"metrics": metrics, "files": {"model": "final", "loss_curve": "loss_curve.png"}}


def launch_training(request_path: Path, log: Log) -> None:
    """Run `python -m pipeline.train REQUEST` as its own process and stream its output.

    Training runs outside the orchestrator's process so that multi-device launchers, which
    re-execute the current command once per device, re-execute the trainer and not the flow.
    """
    command = [sys.executable, "-u", "-m", "pipeline.train", str(request_path)]
    log("launching: " + " ".join(command))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    tail: list[str] = []
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail = (tail + [line])[-40:]
            log(line)
    if proc.returncode != 0:
        raise RuntimeError(
            f"training process exited with code {proc.returncode}; last lines:\n" + "\n".join(tail)
        )


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the launching process dies, so a killed pipeline run
    leaves no orphan trainer writing checkpoints beside the next run's trainer."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _evaluate(ctx: StageContext) -> dict[str, Any]:
    from pipeline.evaluate import evaluate_model

    shards = json.loads((ctx.inputs["shards"] / "_manifest.json").read_text())
    result = evaluate_model(
        ctx.inputs["pretrain"] / "final",
        ctx.inputs["shards"],
        float(shards["stats"]["bytes_per_token_val"]),
        ctx.config.evaluate,
        ctx.out,
    )
    return {"metrics": result["metrics"], "generations": result["generations"]}


def _register(ctx: StageContext) -> dict[str, Any]:
    from pipeline.tracking.registry import register_model_dir

    if not ctx.tracking_uri or not ctx.mlflow_run_id:
        raise RuntimeError("the register stage needs an MLflow tracking URI and run")
    evaluation = json.loads((ctx.inputs["evaluate"] / "_manifest.json").read_text())
    cfg = ctx.config.register
    result = register_model_dir(
        ctx.tracking_uri,
        ctx.mlflow_run_id,
        ctx.inputs["pretrain"] / "final",
        cfg.model_name,
        evaluation["metrics"],
        cfg.metric,
        cfg.mode,
        tags={"pretrain_output": str(ctx.inputs["pretrain"])},
    )
    return {"registered": result}


def _registry_identity(config: PipelineConfig, tracking_uri: str | None) -> list[str]:
    """A registration is only 'done' in the registry it went to."""
    from pipeline.tracking.runs import redact

    return [redact(tracking_uri or "")]


STAGES: tuple[Stage, ...] = (
    Stage("ingest", 1, (), ("ingest",), _ingest, external=_ingest_inputs),
    Stage("clean", 1, ("ingest",), ("clean",), _clean),
    Stage("dedup", 1, ("clean",), ("dedup",), _dedup),
    Stage("tokenizer", 1, ("dedup",), ("tokenizer",), _tokenizer),
    Stage("shards", 1, ("dedup", "tokenizer"), ("shards",), _shards),
    Stage("pretrain", 1, ("shards", "tokenizer"), ("model", "train"), _pretrain, keep_partial=True),
    Stage("evaluate", 1, ("pretrain", "shards"), ("evaluate",), _evaluate),
    Stage(
        "register",
        1,
        ("evaluate", "pretrain"),
        ("register",),
        _register,
        external=_registry_identity,
    ),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
BY_NAME = {s.name: s for s in STAGES}


# ------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class PlannedStage:
    stage: Stage
    output: StageOutput
    config: dict[str, Any]  # the fingerprinted config fields, logged as the stage's params
    upstream: dict[str, StageOutput] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.stage.name


def plan(
    config: PipelineConfig, workdir: Path, tracking_uri: str | None = None
) -> list[PlannedStage]:
    """Every stage with its fingerprinted output location, in DAG order."""
    planned: dict[str, PlannedStage] = {}
    for stage in STAGES:
        upstream = {name: planned[name].output for name in stage.upstream}
        inputs = [f"{name}:{out.fingerprint}" for name, out in upstream.items()]
        if stage.external:
            inputs += stage.external(config, tracking_uri)
        fields = stage.config_fields(config)
        fp = fingerprint(stage.name, stage.version, fields, inputs)
        planned[stage.name] = PlannedStage(
            stage, StageOutput(Path(workdir), stage.name, fp), fields, upstream
        )
    return list(planned.values())


def select(
    stages: list[PlannedStage], only: list[str] | None = None, start: str | None = None
) -> list[PlannedStage]:
    """The stages to run for `--only a,b` or `--from a` (all of them by default)."""
    for name in [*(only or []), *([start] if start else [])]:
        if name not in BY_NAME:
            raise ValueError(f"unknown stage {name!r} (stages: {', '.join(STAGE_NAMES)})")
    if only:
        return [p for p in stages if p.name in only]
    if start:
        first = STAGE_NAMES.index(start)
        return [p for p in stages if STAGE_NAMES.index(p.name) >= first]
    return stages


class UpstreamMissing(RuntimeError):
    pass


def run_stage(
    planned: PlannedStage,
    config: PipelineConfig,
    tracking_uri: str | None = None,
    mlflow_run_id: str | None = None,
    log: Log = print,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Run one stage (or reuse its complete output); return its manifest."""
    output = planned.output
    if output.complete():
        manifest = output.manifest()
        return {**manifest, "reused": True}
    missing = [name for name, up in planned.upstream.items() if not up.complete()]
    if missing:
        raise UpstreamMissing(
            f"stage {planned.name!r} needs complete outputs of {', '.join(missing)} "
            f"(expected under {', '.join(str(planned.upstream[m].path) for m in missing)}); run them first"
        )
    started = time.time()
    with building(output, keep_partial=planned.stage.keep_partial) as partial:
        if output.complete():  # another run finished it while we waited for the lease
            return {**output.manifest(), "reused": True}
        ctx = StageContext(
            config=config,
            inputs={name: up.path for name, up in planned.upstream.items()},
            out=partial,
            tracking_uri=tracking_uri,
            mlflow_run_id=mlflow_run_id,
            log=log,
            executor=executor or SerialExecutor(),
        )
        body = planned.stage.run(ctx)
        manifest = {
            **body,
            "config": planned.config,
            "inputs": {name: up.fingerprint for name, up in planned.upstream.items()},
            "code_version": planned.stage.version,
            "seconds": round(time.time() - started, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        publish(output, manifest)
    return {**output.manifest(), "reused": False}
