"""Held-out scores that compare across the days of an incremental run.

In: the evaluated model's folder, today's shards folder (the val split of today's new
documents), and the folder of the model today's pretraining started from (the champion), if any.
Out: `val_bpb_new` (today's held-out part) and, for a run that started from a champion,
`start_val_bpb_new`: the champion on today's held-out part, so "better on the new news"
compares two models on the same documents (the champion's own `val_bpb_new` was measured on
another day's). `val_bpb_first`, the first increment's held-out split, is the `val_bpb` the
evaluate stage scores there (pipeline/stages/evaluate.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config import EvaluateConfig
from pipeline.evaluate.language_model import bits_per_byte, heldout_loss
from pipeline.outputs import read_result
from pipeline.tokenizer.token_shards import split_paths


def heldout_bpb(model_dir: Path, shards_dir: Path, cfg: EvaluateConfig) -> float | None:
    """Bits per byte of a model on a shards folder's val split (None: no val tokens)."""
    from pipeline.evaluate.suite import pick_device
    from pipeline.model.checkpoint import load_model

    val = split_paths(shards_dir, "val")
    if not val:
        return None
    bytes_per_token = float(read_result(shards_dir).stats["bytes_per_token_val"])
    net = load_model(Path(model_dir)).to(pick_device(cfg.device)).eval()
    with torch.no_grad():
        total, count = heldout_loss(net, val, cfg.batch_size, cfg.val_batches)
    return bits_per_byte(total / count, bytes_per_token) if count else None


def increment_metrics(
    model_dir: Path, new_shards: Path, cfg: EvaluateConfig, start_model_dir: Path | None = None
) -> dict[str, float]:
    """`val_bpb_new` of the model and `start_val_bpb_new` of the model it started from."""
    metrics: dict[str, float] = {}
    for name, model in (("val_bpb_new", model_dir), ("start_val_bpb_new", start_model_dir)):
        value = heldout_bpb(Path(model), Path(new_shards), cfg) if model is not None else None
        if value is not None:
            metrics[name] = value
    return metrics
