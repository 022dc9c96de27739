"""Hand-checked metrics and the promotion rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.evaluate.language_model import _windows, bits_per_byte, heldout_loss
from pipeline.model.gpt import GPT, GPTConfig
from pipeline.tokenizer.token_shards import TokenShardWriter
from pipeline.tracking.registry import better
from pipeline.tracking.runs import redact, safe_params


def test_bits_per_byte_by_hand():
    # ln(2) nats per token is one bit per token; at 4 bytes per token that is 0.25 bits per byte.
    assert bits_per_byte(math.log(2), 4.0) == pytest.approx(0.25)


def test_windows_score_every_token_once():
    tokens = np.arange(10)
    spans = _windows(tokens, block_size=4)
    assert spans == [(0, 5), (4, 9), (8, 10)]
    assert sum(e - s - 1 for s, e in spans) == len(tokens) - 1


def test_heldout_loss_of_a_uniform_model_is_log_vocab(tmp_path):
    # A model whose logits are all zero predicts uniformly: loss = ln(vocab) on every token.
    torch.manual_seed(0)
    net = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=1, n_embd=8))
    for p in net.parameters():
        torch.nn.init.zeros_(p)
    with TokenShardWriter(tmp_path, "val", 50, 1000) as writer:
        writer.write(np.arange(21) % 50)
    total, count = heldout_loss(net, sorted(tmp_path.glob("val-*.bin")), batch_size=2)
    assert count == 20
    assert total / count == pytest.approx(math.log(50), rel=1e-5)


def test_promotion_rule():
    assert better(2.0, None, "min")
    assert better(1.9, 2.0, "min") and not better(2.1, 2.0, "min")
    assert better(0.6, 0.5, "max") and not better(0.4, 0.5, "max")
    assert not better(float("nan"), None, "min")


def test_no_secrets_in_params():
    params = safe_params(
        {"db": {"password": "hunter2", "uri": "postgresql://me:hunter2@db/x"}, "lr": 0.1}
    )
    assert "db.password" not in params
    assert "hunter2" not in " ".join(params.values())
    assert params["lr"] == "0.1"
    assert redact("http://u:p@host/x") == "http://***:***@host/x"
