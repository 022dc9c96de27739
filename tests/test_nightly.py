"""The pieces of a nightly increment that make the new version better (issue 20): replay of
earlier increments' documents, the continuation schedule with the optimizer state carried over,
a budget in tokens, and the promotion rule with a guard metric. Real token shards, real
training on the CPU; the 3-day flow is in tests/test_nightly_flow.py."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import char_data, make_request, quiet_mlflow, shards  # noqa: F401

from pipeline.config import TrainConfig
from pipeline.model.gpt import GPTConfig
from pipeline.tokenizer.replay import REPLAY_PREFIX, add_replay, own_train_shards
from pipeline.tokenizer.token_shards import TokenShardWriter, load_tokens, split_paths
from pipeline.tracking.registry import PromotionRule, guard_holds
from pipeline.train.lit_module import LitGPT, carry_optimizer_state, lr_factor, param_groups
from pipeline.train.pretrain import steps_for_tokens

EOT = 0


def _docs(folder: Path, first_id: int, count: int, length: int, prefix: str = "train") -> None:
    """`count` documents of `length` ids each (id first_id + i, then EOT), in one shard."""
    folder.mkdir(parents=True, exist_ok=True)
    with TokenShardWriter(folder, prefix, 1000, 10_000) as writer:
        for i in range(count):
            writer.write([first_id + i] * (length - 1) + [EOT])


def _replayed(folder: Path) -> list[int]:
    ids = np.concatenate([np.asarray(load_tokens(p)) for p in folder.glob(f"{REPLAY_PREFIX}-*")])
    return sorted({int(i) for i in ids if i != EOT})


def test_replay_takes_the_share_of_earlier_documents_deterministically(tmp_path):
    day1, day2, today = tmp_path / "d1", tmp_path / "d2", tmp_path / "today"
    _docs(day1, 100, 50, 10)  # 500 tokens of day-1 documents
    _docs(day2, 300, 50, 10)
    _docs(day2, 900, 5, 10, prefix=REPLAY_PREFIX)  # day 2's own replay: never replayed again
    _docs(today, 500, 20, 10)  # 200 new tokens
    found = add_replay(today, [day1, day2], 0.5, EOT, 1000, 10_000)
    assert found["new_train_tokens"] == 200
    assert found["replay_tokens"] == 200 and found["replay_documents"] == 20  # 50% of the mix
    replayed = _replayed(today)
    assert replayed and not any(900 <= i < 905 for i in replayed)
    assert any(i < 300 for i in replayed) and any(300 <= i < 500 for i in replayed)
    # whole documents, each ending in EOT; the val split and the new shards are untouched
    ids = np.concatenate([np.asarray(load_tokens(p)) for p in today.glob(f"{REPLAY_PREFIX}-*")])
    assert ids[-1] == EOT and (ids == EOT).sum() == 20
    assert [p.name for p in own_train_shards(today)] == ["train-00000.bin"]
    assert len(split_paths(today, "train")) == 2  # pretraining reads both

    again = tmp_path / "again"
    _docs(again, 500, 20, 10)
    add_replay(again, [day1, day2], 0.5, EOT, 1000, 10_000)
    assert _replayed(again) == replayed


def test_replay_of_a_folder_without_train_shards_names_the_config_key(tmp_path):
    _docs(tmp_path / "today", 500, 2, 10)
    with pytest.raises(ValueError, match="run.replay_from"):
        add_replay(tmp_path / "today", [tmp_path / "gone"], 0.5, EOT, 1000, 10_000)


def test_continuation_schedule_rewarms_from_min_lr_to_a_lower_peak_then_decays():
    train = TrainConfig(
        max_steps=100,
        learning_rate=1e-3,
        min_lr=1e-4,
        warmup_steps=30,
        continue_warmup_steps=10,
        continue_lr_fraction=0.5,
    )
    lrs = [1e-3 * lr_factor(s, train, continuing=True) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4 + 4e-4 / 11)  # from min_lr, not from 0
    assert max(lrs) == pytest.approx(5e-4)  # the lower peak
    assert lrs.index(max(lrs)) == 10
    assert lrs[-1] == pytest.approx(1e-4, rel=0.01)
    restart = [lr_factor(s, train) for s in range(100)]
    assert restart[29] == pytest.approx(30 / 31) and max(restart) == 1.0
    wsd = train.model_copy(update={"schedule": "wsd"})
    flat = [lr_factor(s, wsd, continuing=True) for s in range(10, 80)]
    assert all(f == pytest.approx(0.5) for f in flat)


def test_token_budget_turns_into_steps_rounded_up():
    train = TrainConfig(batch_size=8, grad_accum_steps=2, tokens=10_000)
    assert steps_for_tokens(train, 64, 1) == math.ceil(10_000 / (8 * 2 * 64))
    assert steps_for_tokens(train, 64, 2) == math.ceil(10_000 / (8 * 2 * 64 * 2))


def test_guard_metric_allows_a_small_loss_on_old_and_refuses_more():
    rule = PromotionRule("val_bpb_new", "min", 0.0, "val_bpb_first", 0.01)
    assert guard_holds(rule, 2.0, 2.0) and guard_holds(rule, 2.019, 2.0)
    assert not guard_holds(rule, 2.03, 2.0)
    assert guard_holds(rule, 2.5, None)
    assert "val_bpb_first" in rule.describe()


def test_continuing_carries_the_optimizer_moments_and_uses_the_token_budget(
    shards,  # noqa: F811
    tmp_path,
    quiet_mlflow,  # noqa: F811
    capsys,
):
    from pipeline.train import run_training

    first = tmp_path / "first"
    run_training(make_request(shards, first, max_steps=20))
    state = first / "checkpoints" / "step-000020" / "trainer_state.ckpt"
    second = tmp_path / "second"
    request = make_request(shards, second, max_steps=1, tokens=8 * 32 * 10)  # 10 steps
    request.init_from, request.init_state_from = str(first / "final"), str(state)
    metrics = run_training(request)
    assert metrics["steps"] == 10
    assert "optimizer state carried over" in capsys.readouterr().out
    moments = torch.load(
        second / "checkpoints" / "step-000010" / "trainer_state.ckpt", weights_only=True
    )["optimizer_states"][0]
    before = torch.load(state, weights_only=True)["optimizer_states"][0]
    # 20 steps before + 10 now: AdamW's step count went on from the first run's
    assert float(moments["state"][0]["step"]) == float(before["state"][0]["step"]) + 10

    # another shape: the moments cannot fit, so they start afresh, and it says so
    other = make_request(shards, tmp_path / "other")
    wider = GPTConfig.from_model_config(other.model.model_copy(update={"n_embd": 64}), 256)
    lit = LitGPT(wider, other.train)
    optimizer = torch.optim.AdamW(param_groups(lit.model, other.train))
    assert "not carried over" in carry_optimizer_state(optimizer, state)
    assert not optimizer.state


def test_better_on_new_not_worse_on_old_promotes_by_both_metrics(tmp_path, monkeypatch):
    """Real MLflow registry: `val_bpb_new` is compared with the champion on the same new
    documents (`start_val_bpb_new`), `val_bpb_first` with the champion's own, within 1%."""
    from tiny_models import mlflow_store, save_tiny_model, train_tokenizer

    from pipeline.tracking.registry import register_model_dir
    from pipeline.tracking.runs import Tracker

    uri = mlflow_store(tmp_path)
    # registering sets MLflow's URI in the environment: give it back after this test
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model_dir = save_tiny_model(tmp_path / "model", train_tokenizer(300))
    tracker = Tracker(uri, "nightly-rule", artifact_root=tmp_path / "artifacts")
    rule = PromotionRule("val_bpb_new", "min", 0.0, "val_bpb_first", 0.01)
    days = [
        {"val_bpb_first": 2.0, "val_bpb_new": 2.0},  # day 1: the first champion
        # better on its new news than the champion there, 0.5% worse on old: promoted
        {"val_bpb_first": 2.01, "val_bpb_new": 2.2, "start_val_bpb_new": 2.3},
        # better on new, 3% worse on old than the champion (2.01): kept out
        {"val_bpb_first": 2.07, "val_bpb_new": 2.1, "start_val_bpb_new": 2.4},
        # better on old, but not on its new news than the champion on them: kept out
        {"val_bpb_first": 1.9, "val_bpb_new": 2.5, "start_val_bpb_new": 2.4},
    ]
    promoted = []
    for day, metrics in enumerate(days, 1):
        run = tracker.start_run(f"day-{day}")
        found = register_model_dir(uri, run, model_dir, "rule-gpt", metrics, rule)
        tracker.end_run(run)
        promoted.append(found["promoted"])
    assert promoted == [True, True, False, False]
    assert "outside the tolerance" in found["reason"] or "does not beat" in found["reason"]


def test_continuing_without_an_optimizer_state_warms_up_first(
    shards,  # noqa: F811
    tmp_path,
    quiet_mlflow,  # noqa: F811
    capsys,
):
    from pipeline.train import run_training

    first = tmp_path / "first"
    run_training(make_request(shards, first, max_steps=10, log_every_steps=1))
    capsys.readouterr()
    request = make_request(shards, tmp_path / "second", max_steps=10, log_every_steps=1)
    request.init_from = str(first / "final")  # no init_state_from: fresh AdamW moments
    run_training(request)
    out = capsys.readouterr().out
    lrs = [
        float(m)
        for m in re.findall(r"^step \d+/10 \| train_loss [\d.]+ \| lr ([\d.e+-]+)", out, re.M)
    ]
    # warmup_steps 5 from min_lr (3e-4) to the peak (3e-3), not straight at the peak
    assert lrs[0] == pytest.approx(3e-4 + 2.7e-3 / 6, rel=1e-3)
    assert lrs[:5] == sorted(lrs[:5]) and max(lrs) == pytest.approx(3e-3, rel=1e-3)
