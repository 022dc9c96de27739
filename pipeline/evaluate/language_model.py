"""Held-out language-modeling metrics and sample generations for one model.

In: a model folder (safetensors + config + tokenizer), the val token shards, the val split's
bytes per token, and the `evaluate` config. Out: a metrics dict (val_loss in nats per token,
val_ppl, val_bpb, tokens evaluated) and a list of generations, written to `metrics.json`,
`eval_table.csv` and `generations.jsonl` in the stage folder.

Bits per byte is the tokenizer-independent form of the loss: the total nats over the evaluated
tokens, in bits, divided by the UTF-8 bytes those tokens stand for.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import EvaluateConfig
from pipeline.generate import generate_texts, load_generator
from pipeline.model.gpt import GPT
from pipeline.tokenizer.token_shards import load_tokens, split_paths


def bits_per_byte(loss_nats_per_token: float, bytes_per_token: float) -> float:
    return loss_nats_per_token / math.log(2) / bytes_per_token


def _windows(tokens: np.ndarray, block_size: int) -> list[tuple[int, int]]:
    """Non-overlapping (start, end) spans of up to block_size+1 tokens: each token scored once."""
    spans = []
    for start in range(0, len(tokens) - 1, block_size):
        end = min(start + block_size + 1, len(tokens))
        if end - start >= 2:
            spans.append((start, end))
    return spans


def _by_length(spans: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    groups: dict[int, list[tuple[int, int]]] = {}
    for start, end in spans:
        groups.setdefault(end - start, []).append((start, end))
    return list(groups.values())


@torch.no_grad()
def heldout_loss(
    net: GPT, shard_paths: list[Path], batch_size: int, max_batches: int | None = None
) -> tuple[float, int]:
    """(total negative log-likelihood in nats, tokens scored) over the shards, in order."""
    block = net.config.block_size
    device = next(net.parameters()).device
    total, count, batches = 0.0, 0, 0
    for path in shard_paths:
        tokens = load_tokens(path)
        spans = _windows(tokens, block)
        for first in range(0, len(spans), batch_size):
            if max_batches is not None and batches >= max_batches:
                return total, count
            group = spans[first : first + batch_size]
            # Full windows are stacked into one forward pass; a short last window goes alone.
            for same_length in _by_length(group):
                rows = [np.asarray(tokens[s:e], dtype=np.int64) for s, e in same_length]
                chunk = torch.from_numpy(np.stack(rows)).to(device)
                logits, _ = net(chunk[:, :-1])
                nll = F.cross_entropy(
                    logits.float().reshape(-1, logits.size(-1)),
                    chunk[:, 1:].reshape(-1),
                    reduction="sum",
                )
                total += float(nll)
                count += chunk[:, 1:].numel()
            batches += 1
    return total, count


def evaluate_model(
    model_dir: Path,
    shards_dir: Path,
    bytes_per_token: float,
    cfg: EvaluateConfig,
    out_dir: Path,
) -> dict[str, Any]:
    net, tokenizer = load_generator(str(model_dir))
    val = split_paths(shards_dir, "val")
    if not val:
        raise FileNotFoundError(f"{shards_dir}: no val-*.bin token shards to evaluate on")
    total, count = heldout_loss(net, val, cfg.batch_size, cfg.val_batches)
    if count == 0:
        raise ValueError(f"{shards_dir}: the val split has fewer than 2 tokens")
    loss = total / count
    metrics = {
        "val_loss": loss,
        "val_ppl": math.exp(min(loss, 700.0)),
        "val_bpb": bits_per_byte(loss, bytes_per_token),
        "val_tokens_evaluated": count,
        "num_params": sum(p.numel() for p in net.parameters()),
    }
    texts = generate_texts(
        net,
        tokenizer,
        cfg.prompts,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        seed=cfg.seed,
    )
    generations = [{"prompt": p, "text": t} for p, t in zip(cfg.prompts, texts, strict=True)]
    out_dir = Path(out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    with (out_dir / "generations.jsonl").open("w", encoding="utf-8") as handle:
        for row in generations:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    table = "metric,value\n" + "".join(f"{k},{v}\n" for k, v in metrics.items())
    (out_dir / "eval_table.csv").write_text(table, encoding="utf-8")
    return {"metrics": metrics, "generations": generations}
