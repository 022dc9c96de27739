"""What a stage is: the one typed interface every stage of the DAG implements.

In: nothing (subclasses describe a stage). Out: `Stage`, whose methods say everything the
planner (`pipeline.dag.plan`), the runner (`pipeline.dag.run_stage`) and the orchestrator
(flows/) need to know about one stage: whether a config has it, what it reads (`reads`), which
config fields change its output (`fields`), how it runs (`run` -> `StageResult`), how a person
reads its result (`summary`, `tables`), its retry policy, whether its units may run on Dask, and
what an incremental run does when nothing new reached it. `Reads` and `StageContext` are what
goes in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pipeline.config import PipelineConfig, fingerprint_fields
from pipeline.outputs import StageResult
from pipeline.parallel import Executor, SerialExecutor

Log = Callable[[str], None]


@dataclass(frozen=True)
class Reads:
    """What one stage reads, given a config.

    - `stages`: upstream stages of this plan, by name, in order;
    - `outputs`: upstream outputs the config fixes instead (an incremental run's first held-out
      shards), name -> an existing output folder of that stage;
    - `external`: fingerprints of what it reads from outside the DAG (source files, eval
      files, a registry version, a model to start from), so that a change there re-runs it.
    """

    stages: tuple[str, ...] = ()
    outputs: dict[str, Path] = field(default_factory=dict)
    external: tuple[str, ...] = ()


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


class Stage:
    """One stage of the pipeline. Subclasses set the class attributes and override `run`, and
    `reads` / `fields` / `summary` / ... where the defaults do not fit."""

    name: ClassVar[str]
    version: ClassVar[int]  # bump when the output for the same inputs would change
    sections: ClassVar[tuple[str, ...]] = ()  # config sections whose fields are fingerprinted
    retries: ClassVar[int] = 0  # orchestrator retries (training resumes; registry writes)
    on_dask: ClassVar[bool] = False  # its units of work may run on Dask workers
    keep_partial: ClassVar[bool] = False  # resume from a killed attempt's files (checkpoints)
    # The count of documents that got through (a data stage); when it is 0 in an incremental
    # run, nothing new is left and the run stops after this stage.
    passed_count: ClassVar[str | None] = None

    def included(self, config: PipelineConfig) -> bool:
        """Whether this config's pipeline has the stage at all."""
        return True

    def reads(self, config: PipelineConfig, tracking_uri: str | None) -> Reads:
        return Reads()

    def fields(self, config: PipelineConfig, tracking_uri: str | None = None) -> dict[str, Any]:
        """The config fields that change the output (they go into the fingerprint)."""
        return {s: fingerprint_fields(getattr(config, s)) for s in self.sections}

    def given_output(self, config: PipelineConfig) -> Path | None:
        """An existing output the config says to use instead of running the stage."""
        return None

    def run(self, ctx: StageContext) -> StageResult:
        raise NotImplementedError

    def summary(self, result: StageResult) -> list[str]:
        """Markdown sections for this stage's card in Prefect and summary in MLflow, beyond the
        counts and metrics every stage shows (pipeline.reports.stage_markdown)."""
        return []

    def tables(self, result: StageResult) -> dict[str, list[dict[str, Any]]]:
        """Row tables logged to MLflow, by file name stem."""
        return {name: rows for name, rows in result.tables.items() if rows}

    def nothing_new(self, config: PipelineConfig, result: StageResult) -> bool:
        """In an incremental run: nothing new got through this stage, so the run stops here."""
        if self.passed_count is None or config.run.mode != "incremental":
            return False
        return result.counts.get(self.passed_count) == 0
