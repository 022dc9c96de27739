"""The stages of the pipeline, in DAG order: one `Stage` object each (pipeline/stages/base.py),
in the file of the stage it describes. Adding a stage is one new file here and its place in
`STAGES`; the planner (pipeline/dag.py) and the orchestrator (flows/) know nothing else.
"""

from __future__ import annotations

from pipeline.stages.base import Reads, Stage, StageContext
from pipeline.stages.clean import Clean
from pipeline.stages.decontaminate import Decontaminate
from pipeline.stages.dedup import Dedup
from pipeline.stages.evaluate import Evaluate
from pipeline.stages.finetune import Finetune
from pipeline.stages.ingest import Ingest
from pipeline.stages.pretrain import Pretrain
from pipeline.stages.quality import Quality
from pipeline.stages.register import Register
from pipeline.stages.tokenizer import Shards, Tokenizer

STAGES: tuple[Stage, ...] = (
    Ingest(),
    Clean(),
    Dedup(),
    Decontaminate(),
    Quality(),
    Tokenizer(),
    Shards(),
    Pretrain(),
    Finetune(),
    Evaluate(),
    Register(),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
BY_NAME = {s.name: s for s in STAGES}

__all__ = ["BY_NAME", "STAGES", "STAGE_NAMES", "Reads", "Stage", "StageContext"]
