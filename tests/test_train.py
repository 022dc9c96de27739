"""Pretraining: data windows, LR schedule, request file, a real Lightning run logged to MLflow,
bit-exact resume from a checkpoint, and a process killed with SIGKILL that resumes to the end.

The token shards are built here from real text (the repository's data/sample, else the shared
tinyshakespeare) with a byte-level id mapping (vocab 256), through TokenShardWriter.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import TrainConfig
from pipeline.model import load_model
from pipeline.tokenizer.token_shards import TokenShardWriter
from pipeline.train import TrainRequest
from pipeline.train.checkpoints import complete_checkpoints, latest_checkpoint
from pipeline.train.data import FixedValWindows, RandomTrainBatches, TokenWindows
from pipeline.train.lit_module import lr_factor

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "lm" / "tinyshakespeare" / "input.txt"
TEXT_BYTES = 48_000


def real_text() -> bytes:
    """About 48 KB of real English text, or skip when no source is present."""
    sample = b"".join(p.read_bytes() for p in sorted((REPO / "data" / "sample").rglob("*.txt")))
    if len(sample) >= TEXT_BYTES:
        return sample[:TEXT_BYTES]
    if SHAKESPEARE.is_file():
        return SHAKESPEARE.read_bytes()[:TEXT_BYTES]
    pytest.skip("no real text: data/sample/*.txt and the shared tinyshakespeare are absent")


def write_byte_shards(folder: Path, text: bytes, val_bytes: int = 6_000) -> Path:
    """Byte-level token shards (id = byte value); the last `val_bytes` go to val."""
    ids = np.frombuffer(text, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    with TokenShardWriter(folder, "train", 256, tokens_per_shard=16_000) as writer:
        writer.write(ids[:-val_bytes])  # several train shards: windows span the shard list
    with TokenShardWriter(folder, "val", 256, tokens_per_shard=16_000) as writer:
        writer.write(ids[-val_bytes:])
    return folder


@pytest.fixture
def quiet_mlflow(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "1")


@pytest.fixture
def shards(tmp_path) -> Path:
    return write_byte_shards(tmp_path / "shards", real_text())


def make_request(shards: Path, out_dir: Path, **train) -> TrainRequest:
    train_fields = dict(
        max_steps=30,
        batch_size=8,
        learning_rate=3e-3,
        min_lr=3e-4,
        warmup_steps=5,
        val_every_steps=10,
        val_batches=4,
        checkpoint_every_steps=10,
        keep_last_checkpoints=2,
        log_every_steps=5,
        progress_bar=False,
    )
    train_fields.update(train)
    return TrainRequest(
        model=dict(n_layer=2, n_head=2, n_embd=32, block_size=32),
        train=train_fields,
        vocab_size=256,
        eot_id=0,
        shards_dir=str(shards),
        out_dir=str(out_dir),
        bytes_per_token_val=1.0,  # byte-level: one byte per token
    )


def final_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return load_model(out_dir / "final").state_dict()


# ------------------------------------------------------------------------------ pure pieces


def test_lr_schedule_warms_up_then_follows_a_cosine_to_min_lr():
    t = TrainConfig(max_steps=100, warmup_steps=10, learning_rate=1e-3, min_lr=1e-4)
    lrs = [t.learning_rate * lr_factor(s, t) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-3 / 11)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11], strict=True))  # warmup rises
    assert max(lrs) == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:-1], lrs[11:], strict=True))  # then only falls
    assert lrs[55] == pytest.approx((1e-3 + 1e-4) / 2)  # cosine midpoint
    assert lrs[100] == pytest.approx(1e-4)


def test_train_batches_are_shifted_windows_fixed_by_seed_rank_and_index(shards):
    windows = TokenWindows(sorted(shards.glob("train-*.bin")), window=33, split="train")
    assert windows.num_windows == sum(n - 32 for n in (16_000, 16_000, 10_000))
    stream = RandomTrainBatches(windows, batch_size=4, seed=1)
    x, y = stream.batch(7)
    assert x.shape == y.shape == (4, 32) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(stream.batch(7)[0], x)
    assert not torch.equal(stream.batch(8)[0], x)
    assert not torch.equal(RandomTrainBatches(windows, 4, seed=1, rank=1).batch(7)[0], x)
    # the stream started at batch 7 (a resume) yields the same batch 7
    resumed = next(iter(RandomTrainBatches(windows, 4, seed=1, start_batch=7)))
    assert torch.equal(resumed[0], x)
    # the windows hold the real bytes
    text = bytes(x[0].tolist()).decode("utf-8", errors="replace")
    assert sum(c.isalpha() or c.isspace() for c in text) > 0.7 * len(text)


def test_val_windows_are_fixed_and_spread_over_the_split(shards):
    windows = TokenWindows(sorted(shards.glob("val-*.bin")), window=33, split="val")
    val = FixedValWindows(windows, count=12)
    assert len(val) == 12
    assert val.indices[0] == 0 and val.indices[-1] == windows.num_windows - 1
    assert np.all(np.diff(val.indices) > 0)
    x, y = val[3]
    assert torch.equal(x[1:], y[:-1])
    assert torch.equal(FixedValWindows(windows, count=12)[3][0], x)


def test_val_split_smaller_than_one_window_is_a_clear_error(tmp_path):
    with TokenShardWriter(tmp_path, "val", 256, tokens_per_shard=1000) as writer:
        writer.write(np.arange(20))
    with pytest.raises(ValueError, match=r"val split has 20 tokens.*block_size \+ 1 = 33"):
        TokenWindows(sorted(tmp_path.glob("val-*.bin")), window=33, split="val")
    with pytest.raises(FileNotFoundError, match="train"):
        TokenWindows([], window=33, split="train")


def test_train_request_json_roundtrip(tmp_path):
    request = make_request(tmp_path / "shards", tmp_path / "out")
    request.tokenizer_path = str(tmp_path / "tokenizer.json")
    path = request.to_json(tmp_path / "req" / "request.json")
    again = TrainRequest.from_json(path)
    assert again == request
    assert again.train_config().max_steps == 30
    assert again.model_config().n_embd == 32
    raw = json.loads(path.read_text())
    raw["surprise"] = 1
    with pytest.raises(ValueError, match="surprise"):
        TrainRequest.from_dict(raw)


# --------------------------------------------------------------------------- real training


def test_training_writes_checkpoints_final_metrics_and_logs_to_mlflow(
    shards, tmp_path, mlflow_uri, quiet_mlflow, capsys
):
    from mlflow import MlflowClient

    from pipeline.train import run_training

    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.create_experiment("train-test")
    run_id = client.create_run(experiment).info.run_id  # the orchestrator's stage run
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text('{"model": "byte-level stand-in"}')
    out = tmp_path / "out"
    request = make_request(shards, out)
    request.mlflow_tracking_uri = mlflow_uri
    request.mlflow_run_id = run_id
    request.tokenizer_path = str(tokenizer)

    metrics = run_training(request)

    # checkpoints: every 10 steps, the last two kept, each complete
    assert [step for step, _ in complete_checkpoints(out / "checkpoints")] == [20, 30]
    assert not list((out / "checkpoints").glob(".tmp-*"))
    state = torch.load(
        out / "checkpoints" / "step-000030" / "trainer_state.ckpt", weights_only=True
    )
    assert state["global_step"] == 30
    assert "state_dict" not in state  # weights live in model.safetensors only
    assert state["optimizer_states"] and state["lr_schedulers"]

    # final model = the last checkpoint's weights; tokenizer copied
    final = final_weights(out)
    last = load_model(out / "checkpoints" / "step-000030").state_dict()
    assert all(torch.equal(final[k], last[k]) for k in final)
    assert (out / "final" / "tokenizer.json").read_text() == tokenizer.read_text()
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # metrics: the model learned something about English bytes in 30 steps
    written = json.loads((out / "train_metrics.json").read_text())
    assert written == metrics
    assert metrics["steps"] == 30
    assert metrics["tokens_seen"] == 30 * 8 * 32
    assert metrics["num_params"] == load_model(out / "final").num_params(non_embedding=False)
    assert metrics["val_loss"] < math.log(256) - 1.0
    assert metrics["val_bpb"] == pytest.approx(metrics["val_loss"] / math.log(2))
    assert metrics["val_ppl"] == pytest.approx(math.exp(metrics["val_loss"]))
    assert metrics["tokens_per_second"] > 0 and metrics["wall_seconds"] > 0

    # MLflow: metrics at optimizer steps, and the run left open for its owner
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    history = {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        for key in ("train_loss", "val_loss", "val_bpb", "lr", "tokens_seen")
    }
    assert [s for s, _ in history["train_loss"]] == [5, 10, 15, 20, 25, 30]
    assert [s for s, _ in history["val_loss"]] == [10, 20, 30]
    assert history["val_loss"][-1][1] == pytest.approx(metrics["val_loss"])
    assert history["val_loss"][-1][1] < history["val_loss"][0][1]
    assert history["tokens_seen"][-1] == (30, 30 * 8 * 32)

    printed = capsys.readouterr().out
    assert "step 30/30 | train_loss" in printed and "val_loss" in printed


def test_resume_from_a_checkpoint_is_bit_exact(shards, tmp_path, quiet_mlflow):
    from pipeline.train import run_training

    out = tmp_path / "out"
    # dropout on: the restored RNG state matters too
    request = make_request(shards, out, max_steps=20, keep_last_checkpoints=5, val_batches=2)
    request.model["dropout"] = 0.1
    straight = run_training(request)
    straight_weights = final_weights(out)

    # Forget everything after step 10, as if the process had died there, and run again.
    for step, folder in complete_checkpoints(out / "checkpoints"):
        if step > 10:
            shutil.rmtree(folder)
    shutil.rmtree(out / "final")
    (out / "checkpoints" / ".tmp-step-000020").mkdir()  # a half-written checkpoint
    resumed = run_training(request)

    assert resumed["resumed_from_step"] == 10 and resumed["steps"] == 20
    assert not (out / "checkpoints" / ".tmp-step-000020").exists()
    weights = final_weights(out)
    assert all(torch.equal(weights[k], straight_weights[k]) for k in weights)
    assert resumed["val_loss"] == straight["val_loss"]
    assert resumed["train_loss"] == straight["train_loss"]


def test_cli_reports_failures_with_a_clear_message_and_exit_status(tmp_path, capsys):
    from pipeline.train.__main__ import main

    assert main([]) == 2
    request = make_request(tmp_path / "no-such-shards", tmp_path / "out")
    path = request.to_json(tmp_path / "request.json")
    assert main([str(path)]) == 1
    err = capsys.readouterr().err
    assert "train failed: FileNotFoundError: token shards folder not found" in err
    assert not (tmp_path / "out" / "final").exists()


@pytest.mark.slow
def test_a_killed_training_process_resumes_to_max_steps(shards, tmp_path, quiet_mlflow):
    """SIGKILL a real `python -m pipeline.train` after its first checkpoint, start it again."""
    from pipeline.train import run_training

    # Big enough that the run lasts a few seconds: time to kill it between checkpoints.
    settings = dict(max_steps=200, batch_size=16, checkpoint_every_steps=20, val_every_steps=100)
    out = tmp_path / "out"
    request = make_request(shards, out, **settings)
    request.model.update(n_embd=64, n_head=4, block_size=64)
    path = request.to_json(tmp_path / "request.json")
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}
    command = [sys.executable, "-m", "pipeline.train", str(path)]

    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 120
    while latest_checkpoint(out / "checkpoints") is None and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    log = process.communicate()[0].decode()
    assert process.returncode == -signal.SIGKILL, log
    killed_at = int(latest_checkpoint(out / "checkpoints").name.split("-")[1])
    print(f"killed at step {killed_at}")
    assert 0 < killed_at < 200, log
    assert not (out / "final").exists()

    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming from" in again.stdout
    assert "step 200/200" in again.stdout
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["steps"] == 200 and metrics["resumed_from_step"] == killed_at

    # The same request run straight through gives the very same weights (CPU, fp32).
    straight_out = tmp_path / "straight"
    straight = make_request(shards, straight_out, **settings)
    straight.model.update(n_embd=64, n_head=4, block_size=64)
    run_training(straight)
    reference = final_weights(straight_out)
    weights = final_weights(out)
    assert all(torch.equal(weights[k], reference[k]) for k in weights)
