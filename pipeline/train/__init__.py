"""Pretraining with Lightning: token shards + a TrainRequest in, checkpoints and metrics out.

`TrainRequest` (request.py) is cheap to import; `run_training` (pretrain.py) pulls in Lightning
and is loaded on first use, so an orchestrator can write requests without that cost.
Run as a process with `python -m pipeline.train REQUEST.json`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.train.request import PretrainData, SFTData, TrainRequest

if TYPE_CHECKING:
    from pipeline.train.pretrain import run_training

__all__ = ["PretrainData", "SFTData", "TrainRequest", "run_training"]


def __getattr__(name: str) -> Any:
    if name == "run_training":
        from pipeline.train.pretrain import run_training

        return run_training
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
