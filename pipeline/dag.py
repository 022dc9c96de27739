"""The stages of the pipeline and how one stage runs, without any orchestrator.

In: a validated `PipelineConfig` and a work dir. Out: for each stage, a complete output folder
`<workdir>/<stage>/<fingerprint>/` with its `_manifest.json` (see `pipeline.outputs`).

`plan()` computes every stage's fingerprint from its config fields, its code version and its
upstream fingerprints, so it knows which outputs already exist before running anything.
`run_stage()` runs one stage into a partial folder under a lease and publishes it, or returns the
existing manifest when the output is already complete. Orchestrators (flows/) call these.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig, fingerprint_fields, resolve_path
from pipeline.outputs import StageOutput, building, fingerprint, publish
from pipeline.parallel import Executor, SerialExecutor

Log = Callable[[str], None]
LEASE_WAIT_SECONDS = 24 * 3600  # how long a run waits for another run's stage to finish


@dataclass(frozen=True)
class StageContext:
    config: PipelineConfig
    inputs: dict[str, Path]  # upstream stage name -> its complete output folder
    out: Path  # the partial folder to write into
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None  # this stage's MLflow run, for stages that log themselves
    log: Log = print
    executor: Executor = field(default_factory=SerialExecutor)  # runs a stage's units of work
    fingerprint: str = ""  # this stage output's fingerprint (the register stage's key)


@dataclass(frozen=True)
class Stage:
    name: str
    version: int  # bump when the stage's output for the same inputs would change
    upstream: tuple[str, ...]
    sections: tuple[str, ...]  # config sections whose output-changing fields go in the fingerprint
    run: Callable[[StageContext], dict[str, Any]]
    keep_partial: bool = False  # resume from a killed attempt's files (training checkpoints)
    external: Callable[[PipelineConfig, str | None], list[str]] | None = None
    # When what a stage reads depends on the config (a tokenizer given in the config reads no
    # documents): (config, tracking URI) -> (upstream stages read, fingerprinted config fields).
    # Default: all of `upstream`, and the output-changing fields of `sections`.
    depends: (
        Callable[[PipelineConfig, str | None], tuple[tuple[str, ...], dict[str, Any]]] | None
    ) = None
    # Whether the config includes this stage at all (fine-tuning only with finetune.tasks;
    # no pretraining, nor data stages, when fine-tuning starts from an outside model).
    enabled: Callable[[PipelineConfig], bool] | None = None

    def included(self, config: PipelineConfig) -> bool:
        return self.enabled is None or self.enabled(config)

    def config_fields(self, config: PipelineConfig) -> dict[str, Any]:
        return {s: fingerprint_fields(getattr(config, s)) for s in self.sections}


# --------------------------------------------------------------------------- stage adapters


def _ingest(ctx: StageContext) -> dict[str, Any]:
    from pipeline.ingest import run_ingest

    cfg = ctx.config
    body = run_ingest(cfg.sources, cfg.base_dir, ctx.out, cfg.ingest, ctx.executor)
    if cfg.run.seen_before:  # an incremental run: only documents no earlier increment took in
        from pipeline.incremental import drop_seen

        dropped = drop_seen(ctx.out, cfg.run.seen_before)
        body["counts"]["documents"] -= sum(dropped.values())
        body["counts"]["seen_before"] = sum(dropped.values())
        body["counts"]["seen_before_by_source"] = dropped
    return body


def _ingest_inputs(config: PipelineConfig, tracking_uri: str | None) -> list[str]:
    from pipeline.ingest import source_input_fingerprint

    return source_input_fingerprint(config.sources, config.base_dir)


def _clean(ctx: StageContext) -> dict[str, Any]:
    from pipeline.clean import run_clean

    return run_clean(ctx.inputs["ingest"], ctx.out, ctx.config.clean, ctx.executor, ctx.log)


def _dedup(ctx: StageContext) -> dict[str, Any]:
    from pipeline.dedup import run_dedup

    cfg = ctx.config.dedup
    previous = Path(resolve_path(ctx.config, cfg.previous)) if cfg.previous else None
    return run_dedup(ctx.inputs["clean"], ctx.out, cfg, ctx.executor, ctx.log, previous)


def _decontaminate(ctx: StageContext) -> dict[str, Any]:
    from pipeline.decontaminate import run_decontaminate

    # Evaluation indexes are cached beside the stage's outputs, by the eval files' contents.
    cache = ctx.out.parent / ".eval-index"
    return run_decontaminate(ctx.inputs["dedup"], ctx.out, ctx.config, cache, ctx.executor, ctx.log)


def _decontaminate_inputs(config: PipelineConfig, tracking_uri: str | None) -> list[str]:
    from pipeline.decontaminate import eval_inputs

    return eval_inputs(config)


def _decontaminates(config: PipelineConfig) -> bool:
    return _pretrains(config) and config.decontaminate.enabled


def _quality(ctx: StageContext) -> dict[str, Any]:
    from pipeline.quality import run_quality

    docs = ctx.inputs["decontaminate" if _decontaminates(ctx.config) else "dedup"]
    return run_quality(
        docs, ctx.out, ctx.config, ctx.tracking_uri, ctx.executor, ctx.log, ctx.mlflow_run_id
    )


def _quality_depends(
    config: PipelineConfig, tracking_uri: str | None
) -> tuple[tuple[str, ...], dict[str, Any]]:
    reads = ("decontaminate",) if _decontaminates(config) else ("dedup",)
    return reads, {"quality": fingerprint_fields(config.quality)}


def _quality_inputs(config: PipelineConfig, tracking_uri: str | None) -> list[str]:
    from pipeline.quality import reference_inputs

    return reference_inputs(config, tracking_uri)


def _documents_stage(config: PipelineConfig) -> str:
    """The last document stage: its output is what the tokenizer and the shards read."""
    if _pretrains(config) and config.quality.enabled:
        return "quality"
    return "decontaminate" if _decontaminates(config) else "dedup"


def _tokenizer(ctx: StageContext) -> dict[str, Any]:
    from pipeline.tokenizer.stage import run_tokenizer_stage

    docs = ctx.inputs.get(_documents_stage(ctx.config))
    return run_tokenizer_stage(docs, ctx.out, ctx.config, ctx.tracking_uri)


def _tokenizer_depends(
    config: PipelineConfig, tracking_uri: str | None
) -> tuple[tuple[str, ...], dict[str, Any]]:
    from pipeline.tokenizer.stage import tokenizer_dependencies

    return tokenizer_dependencies(config, tracking_uri, _documents_stage(config))


def _shards(ctx: StageContext) -> dict[str, Any]:
    from pipeline.tokenizer.stage import run_shards_stage

    docs = ctx.inputs[_documents_stage(ctx.config)]
    return run_shards_stage(docs, ctx.inputs["tokenizer"], ctx.out, ctx.config, ctx.executor)


def _shards_depends(
    config: PipelineConfig, tracking_uri: str | None
) -> tuple[tuple[str, ...], dict[str, Any]]:
    return (_documents_stage(config), "tokenizer"), {"shards": fingerprint_fields(config.shards)}


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
    if ctx.config.run.init_from:  # an incremental run continues from the champion's weights
        from pipeline.generate import resolve_model_dir

        request.init_from = str(resolve_model_dir(ctx.config.run.init_from, ctx.tracking_uri))
    request_path = ctx.out / "train_request.json"
    request.to_json(request_path)
    launch_training(request_path, ctx.log, ctx.config.train.launcher, request.environment())
    metrics = json.loads((ctx.out / "train_metrics.json").read_text())
    return {"metrics": metrics, "files": {"model": "final", "loss_curve": "loss_curve.png"}}


def launch_training(
    request_path: Path,
    log: Log,
    launcher: str | None = None,
    environment: dict[str, str] | None = None,
) -> None:
    """Run `python -m pipeline.train REQUEST` as its own process and stream its output.

    Training runs outside the orchestrator's process so that multi-device launchers, which
    re-execute the current command once per device, re-execute the trainer and not the flow.
    `launcher` (train.launcher) is a command template with {python} and {request}, e.g.
    "srun --ntasks-per-node=8 {python} -u -m pipeline.train {request}" or
    "torchrun --nproc-per-node=8 -m pipeline.train {request}" (pipeline.config.launcher_words
    says which are allowed). `environment` is added to the trainer's (secrets go there, never
    into the request file). When this process is interrupted (SIGTERM, Ctrl-C) or fails while
    training runs, the trainer is stopped before the error goes on.
    """
    from pipeline.config import launcher_words

    words = launcher_words(launcher or "{python} -u -m pipeline.train {request}")
    command = [
        word.replace("{python}", sys.executable).replace("{request}", str(request_path))
        for word in words
    ]
    log("launching: " + " ".join(command))
    env = {**os.environ, **(environment or {}), "PYTHONUNBUFFERED": "1"}
    tail: list[str] = []
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=die_with_parent if sys.platform == "linux" else None,
    ) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                line = line.rstrip()
                tail = (tail + [line])[-40:]
                log(line)
        except BaseException:
            stop_process(proc, log)
            raise
    if proc.returncode != 0:
        raise RuntimeError(
            f"training process exited with code {proc.returncode}; last lines:\n" + "\n".join(tail)
        )


TRAINER_STOP_SECONDS = 5.0  # how long a trainer gets to stop after SIGTERM before SIGKILL


def stop_process(proc: subprocess.Popen, log: Log) -> None:
    """SIGTERM, then SIGKILL after TRAINER_STOP_SECONDS: its checkpoints are written atomically,
    so a kill costs at most the steps since the last one."""
    if proc.poll() is not None:
        return
    log(f"stopping the training process {proc.pid}")
    proc.terminate()
    try:
        proc.wait(timeout=TRAINER_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# Looked up here, not in the forked child, where loading a library could meet a lock that
# another thread of the parent held at the fork.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child (a `preexec_fn`): get SIGTERM when the launching thread's process dies, so
    a killed pipeline run leaves no orphan trainer writing checkpoints beside the next run's
    trainer, nor an orphan server."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


def _pretrains(config: PipelineConfig) -> bool:
    """Pretraining (and the data stages before it) run unless fine-tuning starts elsewhere."""
    return not (config.finetune.enabled and config.finetune.init_from)


def _finetunes(config: PipelineConfig) -> bool:
    return config.finetune.enabled


def _model_stage(config: PipelineConfig) -> str:
    """The stage whose final/ model is evaluated and registered."""
    return "finetune" if config.finetune.enabled else "pretrain"


def _finetune(ctx: StageContext) -> dict[str, Any]:
    from pipeline.finetune.stage import run_finetune_stage

    return run_finetune_stage(
        ctx.config,
        ctx.inputs.get("pretrain"),
        ctx.out,
        ctx.tracking_uri,
        ctx.mlflow_run_id,
        ctx.log,
        launch_training,
    )


def _finetune_depends(
    config: PipelineConfig, tracking_uri: str | None
) -> tuple[tuple[str, ...], dict[str, Any]]:
    reads = () if config.finetune.init_from else ("pretrain",)
    return reads, {"finetune": fingerprint_fields(config.finetune)}


def _finetune_inputs(config: PipelineConfig, tracking_uri: str | None) -> list[str]:
    from pipeline.finetune.examples import task_input_files
    from pipeline.finetune.stage import init_identity
    from pipeline.ingest.files import file_content_digest

    files = [
        f"{path.name}:{file_content_digest(path)}"
        for task in config.finetune.tasks
        for path in task_input_files(task, config.base_dir)
    ]
    return init_identity(config, tracking_uri) + files


def _evaluate_depends(
    config: PipelineConfig, tracking_uri: str | None
) -> tuple[tuple[str, ...], dict[str, Any]]:
    reads = (_model_stage(config), "shards") if _pretrains(config) else ("finetune",)
    if _decontaminates(config):  # its report marks each task clean or contaminated
        reads += ("decontaminate",)
    return reads, {"evaluate": fingerprint_fields(config.evaluate)}


def _evaluate(ctx: StageContext) -> dict[str, Any]:
    from pipeline.evaluate import run_evaluation

    model_stage = _model_stage(ctx.config)
    shards_dir = ctx.inputs.get("shards")
    bytes_per_token = None
    if shards_dir is not None:
        shards = json.loads((shards_dir / "_manifest.json").read_text())
        bytes_per_token = float(shards["stats"]["bytes_per_token_val"])
    base_dir = None
    if model_stage == "finetune" and ctx.config.evaluate.compare_base:
        from pipeline.finetune.stage import base_model_dir

        base_dir = base_model_dir(ctx.inputs["finetune"])
    contamination = None
    if "decontaminate" in ctx.inputs:
        contamination = json.loads((ctx.inputs["decontaminate"] / "_manifest.json").read_text())
        contamination = contamination["contamination"]
    result = run_evaluation(
        ctx.inputs[model_stage] / "final",
        ctx.config.evaluate,
        ctx.config.base_dir,
        ctx.out,
        shards_dir=shards_dir,
        bytes_per_token=bytes_per_token,
        log=ctx.log,
        base_model_dir=base_dir,
        contamination=contamination,
    )
    return {
        "metrics": result["metrics"],
        "eval_table": result["table"],
        "generations": result["generations"],
        "skipped": result["skipped"],
        "counts": {"quarantined_by_reason": result["quarantined"]},
    }


def _eval_inputs(config: PipelineConfig, tracking_uri: str | None) -> list[str]:
    from pipeline.evaluate.tasks import eval_input_fingerprints

    return eval_input_fingerprints(config.evaluate, config.base_dir)


def _register(ctx: StageContext) -> dict[str, Any]:
    from pipeline.tracking.registry import register_model_dir

    if not ctx.tracking_uri or not ctx.mlflow_run_id:
        raise RuntimeError("the register stage needs an MLflow tracking URI and run")
    from pipeline.config import config_hash
    from pipeline.tracking.registry import PromotionRule, git_commit

    evaluation = json.loads((ctx.inputs["evaluate"] / "_manifest.json").read_text())
    cfg = ctx.config.register
    tags = {
        "llmpipe.eval_fingerprint": ctx.inputs["evaluate"].name,
        "llmpipe.config_hash": config_hash(ctx.config),
        "llmpipe.eval_tasks": ",".join(
            sorted({row["task"] for row in evaluation.get("eval_table", [])} - {"model"})
        ),
        **git_commit(),
    }
    if "shards" in ctx.inputs:  # the data the model was pretrained on
        shards = json.loads((ctx.inputs["shards"] / "_manifest.json").read_text())
        tags.update(
            {
                "llmpipe.data_fingerprint": ctx.inputs["shards"].name,
                "llmpipe.documents_fingerprint": str(
                    (shards.get("inputs") or {}).get(_documents_stage(ctx.config), "")
                ),
                "llmpipe.tokenizer_fingerprint": ctx.inputs["tokenizer"].name,
                "llmpipe.pretrain_fingerprint": ctx.inputs["pretrain"].name,
                "llmpipe.pretrain_output": str(ctx.inputs["pretrain"]),
                "llmpipe.shards_output": str(ctx.inputs["shards"]),
            }
        )
    if "finetune" in ctx.inputs:
        tags["llmpipe.finetune_fingerprint"] = ctx.inputs["finetune"].name
        tags["llmpipe.finetune_output"] = str(ctx.inputs["finetune"])
        tags["llmpipe.finetune_init"] = ctx.config.finetune.init_from or "pretrain"
    result = register_model_dir(
        ctx.tracking_uri,
        ctx.mlflow_run_id,
        ctx.inputs[_model_stage(ctx.config)] / "final",
        cfg.model_name,
        evaluation["metrics"],
        PromotionRule(cfg.metric, cfg.mode, cfg.min_improvement),
        tags=tags,
        registration_key=ctx.fingerprint,  # a rerun after a kill completes that version
    )
    return {"registered": result}


def _register_depends(
    config: PipelineConfig, tracking_uri: str | None
) -> tuple[tuple[str, ...], dict[str, Any]]:
    reads: tuple[str, ...] = ("evaluate",)
    if _pretrains(config):
        reads += ("pretrain", "shards", "tokenizer")
    if _finetunes(config):
        reads += ("finetune",)
    return reads, {"register": fingerprint_fields(config.register)}


def _registry_identity(config: PipelineConfig, tracking_uri: str | None) -> list[str]:
    """A registration is only 'done' in the registry it went to."""
    if not tracking_uri:  # no registry: planning needs no MLflow (the GPU check's machine)
        return [""]
    from pipeline.tracking.runs import redact

    return [redact(tracking_uri)]


DATA = _pretrains  # the data stages feed pretraining only
STAGES: tuple[Stage, ...] = (
    Stage("ingest", 3, (), ("ingest",), _ingest, external=_ingest_inputs, enabled=DATA),
    Stage("clean", 2, ("ingest",), ("clean",), _clean, enabled=DATA),
    Stage("dedup", 2, ("clean",), ("dedup",), _dedup, enabled=DATA),
    # Its own stage (not a phase of dedup): it depends on the evaluation files too, so a new
    # eval set re-runs it alone, and dedup's output is shared by configs with and without it.
    Stage(
        "decontaminate",
        1,
        ("dedup",),
        ("decontaminate",),
        _decontaminate,
        external=_decontaminate_inputs,
        enabled=_decontaminates,
    ),
    Stage(
        "quality",
        1,
        ("decontaminate",),
        ("quality",),
        _quality,
        external=_quality_inputs,
        depends=_quality_depends,
        enabled=lambda config: _pretrains(config) and config.quality.enabled,
    ),
    Stage(
        "tokenizer",
        2,
        ("dedup",),
        ("tokenizer",),
        _tokenizer,
        depends=_tokenizer_depends,
        enabled=DATA,
    ),
    Stage(
        "shards",
        2,
        ("dedup", "tokenizer"),
        ("shards",),
        _shards,
        depends=_shards_depends,
        enabled=DATA,
    ),
    Stage(
        "pretrain",
        2,
        ("shards", "tokenizer"),
        ("model", "train"),
        _pretrain,
        keep_partial=True,
        enabled=_pretrains,
    ),
    Stage(
        "finetune",
        1,
        ("pretrain",),
        ("finetune",),
        _finetune,
        keep_partial=True,
        external=_finetune_inputs,
        depends=_finetune_depends,
        enabled=_finetunes,
    ),
    Stage(
        "evaluate",
        2,
        ("pretrain", "shards"),
        ("evaluate",),
        _evaluate,
        external=_eval_inputs,
        depends=_evaluate_depends,
    ),
    Stage(
        "register",
        2,
        ("evaluate", "pretrain", "shards", "tokenizer"),
        ("register",),
        _register,
        external=_registry_identity,
        depends=_register_depends,
    ),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
BY_NAME = {s.name: s for s in STAGES}


def stage_names(config: PipelineConfig) -> tuple[str, ...]:
    """The stages this config's pipeline has, in order."""
    return tuple(s.name for s in STAGES if s.included(config))


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
        if not stage.included(config):
            continue
        if stage.depends:
            reads, fields = stage.depends(config, tracking_uri)
        else:
            reads, fields = stage.upstream, stage.config_fields(config)
        kept = _kept_output(stage.name, config)  # incremental: the first run's tokenizer
        if kept is not None:
            planned[stage.name] = PlannedStage(stage, kept, fields, {})
            continue
        upstream = {name: planned[name].output for name in reads}
        if stage.name == "evaluate" and config.run.heldout_from and "shards" in upstream:
            upstream["shards"] = _output_at(config.run.heldout_from, "shards")  # same held-out
        inputs = [f"{name}:{out.fingerprint}" for name, out in upstream.items()]
        if stage.external:
            inputs += stage.external(config, tracking_uri)
        if stage.name == "ingest" and config.run.seen_before:
            inputs += _seen_fingerprint(config.run.seen_before)
        if stage.name == "pretrain" and config.run.init_from:
            inputs.append(f"init:{config.run.init_from}")
        fp = fingerprint(stage.name, stage.version, fields, inputs)
        planned[stage.name] = PlannedStage(
            stage, StageOutput(Path(workdir), stage.name, fp), fields, upstream
        )
    return list(planned.values())


def _output_at(folder: str, stage: str) -> StageOutput:
    """The StageOutput of an existing output folder `<workdir>/<stage>/<fingerprint>`."""
    path = Path(folder)
    if path.parent.name != stage or not (path / "_manifest.json").is_file():
        raise UpstreamMissing(f"{folder} is not a complete {stage} output")
    return StageOutput(path.parent.parent, stage, path.name)


def _kept_output(stage: str, config: PipelineConfig) -> StageOutput | None:
    if stage == "tokenizer" and config.run.tokenizer_from:
        return _output_at(config.run.tokenizer_from, "tokenizer")
    return None


def _seen_fingerprint(seen_dir: str) -> list[str]:
    files = sorted(Path(seen_dir).glob("*.parquet"))
    return [f"seen:{p.name}:{p.stat().st_size}" for p in files]


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
    # Another run writing this very output (two runs of one deployment): wait for it, then
    # reuse what it published; a gone run's lease is taken over (pipeline.outputs.lease).
    with building(
        output, keep_partial=planned.stage.keep_partial, wait_seconds=LEASE_WAIT_SECONDS, log=log
    ) as partial:
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
            fingerprint=output.fingerprint,
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
