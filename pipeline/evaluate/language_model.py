"""Held-out language-modeling loss over token shards, and bits per byte.

In: a model and the val token shards (flat token arrays, see `pipeline.tokenizer`). Out: the
total negative log-likelihood in nats and the number of tokens scored; `bits_per_byte` turns
a per-token loss into bits per UTF-8 byte, given the split's bytes per token.

Bits per byte is the tokenizer-independent form of the loss: the total nats over the evaluated
tokens, in bits, divided by the UTF-8 bytes those tokens stand for.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.evaluate.scoring import windows
from pipeline.model.gpt import GPT
from pipeline.tokenizer.token_shards import load_tokens


def bits_per_byte(loss_nats_per_token: float, bytes_per_token: float) -> float:
    return loss_nats_per_token / math.log(2) / bytes_per_token


def _windows(tokens: np.ndarray, block_size: int) -> list[tuple[int, int]]:
    """Non-overlapping (start, end) spans of up to block_size+1 tokens: each token scored once."""
    return windows(len(tokens), block_size)


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
