"""Pretraining: data windows, LR schedules, optimizer groups, MFU table, request file, a real
Lightning run logged to MLflow, bit-exact resume, the non-finite step guard, DDP on 2 CPU
processes, and a process killed with SIGKILL that resumes to the same weights.

The token shards are built here from real text (the repository's data/sample, else the shared
tinyshakespeare) with the character-level tokenizer, through TokenShardWriter.
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
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file

from pipeline.config import ModelConfig, TrainConfig
from pipeline.model import GPT, GPTConfig, load_model
from pipeline.special_tokens import EOT_TOKEN
from pipeline.tokenizer.char import new_char_tokenizer
from pipeline.tokenizer.token_shards import TokenShardWriter
from pipeline.train import PretrainData, TrainRequest
from pipeline.train.checkpoints import complete_checkpoints, latest_checkpoint
from pipeline.train.data import FixedValWindows, RandomTrainBatches, TokenWindows
from pipeline.train.lit_module import lr_factor, param_groups, peak_flops

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "lm" / "tinyshakespeare" / "input.txt"
TEXT_CHARS = 48_000
VAL_CHARS = 6_000


def real_text() -> str:
    """About 48 K characters of real English text, or skip when no source is present."""
    sample = "".join(
        p.read_text(encoding="utf-8") for p in sorted((REPO / "data" / "sample").rglob("*.txt"))
    )
    if len(sample) >= TEXT_CHARS:
        return sample[:TEXT_CHARS]
    if SHAKESPEARE.is_file():
        return SHAKESPEARE.read_text(encoding="utf-8")[:TEXT_CHARS]
    pytest.skip("no real text: data/sample/*.txt and the shared tinyshakespeare are absent")


def write_char_shards(folder: Path, text: str) -> tuple[Path, Path, int]:
    """Character-level token shards of `text` (the last VAL_CHARS characters are val) and
    the tokenizer.json that made them; returns (shards folder, tokenizer path, vocab size)."""
    tokenizer = new_char_tokenizer(sorted(set(text)), [EOT_TOKEN])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_path = folder.parent / "tokenizer.json"
    tokenizer.save(str(tokenizer_path))
    vocab = tokenizer.get_vocab_size()
    ids = np.array(tokenizer.encode(text).ids)
    assert len(ids) == len(text)
    with TokenShardWriter(folder, "train", vocab, tokens_per_shard=16_000) as writer:
        writer.write(ids[:-VAL_CHARS])  # several train shards: windows span the shard list
    with TokenShardWriter(folder, "val", vocab, tokens_per_shard=16_000) as writer:
        writer.write(ids[-VAL_CHARS:])
    return folder, tokenizer_path, vocab


@pytest.fixture
def quiet_mlflow(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "1")


@pytest.fixture
def char_data(tmp_path) -> tuple[Path, Path, int]:
    return write_char_shards(tmp_path / "data" / "shards", real_text())


@pytest.fixture
def shards(char_data) -> Path:
    return char_data[0]


def make_request(data: Path | tuple, out_dir: Path, **train) -> TrainRequest:
    shards, tokenizer, vocab = data if isinstance(data, tuple) else (data, None, 256)
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
        model=ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32),
        train=TrainConfig(**train_fields),
        # ASCII text: one byte per token
        data=PretrainData(shards_dir=str(shards), vocab_size=vocab, bytes_per_token_val=1.0),
        out_dir=str(out_dir),
        tokenizer_path=str(tokenizer) if tokenizer else None,
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


@pytest.mark.parametrize("shape", ["linear", "sqrt"])
def test_wsd_schedule_is_flat_then_decays_over_the_last_fraction(shape):
    t = TrainConfig(
        max_steps=100,
        warmup_steps=10,
        learning_rate=1e-3,
        min_lr=0.0,
        schedule="wsd",
        decay_fraction=0.2,
        decay_shape=shape,
    )
    lrs = [t.learning_rate * lr_factor(s, t) for s in range(101)]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11], strict=True))
    assert lrs[10:81] == [pytest.approx(1e-3)] * 71  # stable until step 80
    assert all(a > b for a, b in zip(lrs[80:100], lrs[81:101], strict=True))
    assert lrs[100] == 0.0
    halfway = 1 - (math.sqrt(0.5) if shape == "sqrt" else 0.5)
    assert lrs[90] == pytest.approx(1e-3 * halfway)


def test_weight_decay_only_on_matrices_and_embeddings_as_configured():
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16))
    names = {id(p): n for n, p in model.named_parameters()}

    def decayed(**train) -> set[str]:
        decay, no_decay = param_groups(model, TrainConfig(**train))
        assert decay["weight_decay"] == TrainConfig(**train).weight_decay
        assert no_decay["weight_decay"] == 0.0
        assert len(decay["params"]) + len(no_decay["params"]) == len(names)  # tied head once
        return {names[id(p)] for p in decay["params"]}

    matrices = {"transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.weight"}
    matrices |= {"transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight"}
    embeddings = {"transformer.wte.weight", "transformer.wpe.weight"}
    assert decayed() == matrices | embeddings  # no bias, no LayerNorm
    assert decayed(decay_embeddings=False) == matrices


def test_peak_flops_table_knows_h200_and_halves_for_tf32():
    assert peak_flops("NVIDIA H200", "bf16-mixed") == 989e12
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16-mixed") == 989e12
    assert peak_flops("NVIDIA H100 PCIe", "bf16-true") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "32-true") == 156e12
    assert peak_flops("NVIDIA A10G", "bf16-mixed") == 70e12
    assert peak_flops("Some Future GPU", "bf16-mixed") is None


def test_train_batches_are_shifted_windows_fixed_by_seed_and_index(shards):
    windows = TokenWindows(sorted(shards.glob("train-*.bin")), window=33, split="train")
    assert windows.num_windows == sum(n - 32 for n in (16_000, 16_000, 10_000))
    stream = RandomTrainBatches(windows, batch_size=4, seed=1)
    x, y = stream.batch(7)
    assert x.shape == y.shape == (4, 32) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(stream.batch(7)[0], x)
    assert not torch.equal(stream.batch(8)[0], x)
    assert not torch.equal(RandomTrainBatches(windows, 4, seed=2).batch(7)[0], x)
    # the stream started at batch 7 (a resume) yields the same batch 7
    resumed = next(iter(RandomTrainBatches(windows, 4, seed=1, start_batch=7)))
    assert torch.equal(resumed[0], x)
    # two ranks of batch 2 see together exactly what one process of batch 4 sees
    halves = [RandomTrainBatches(windows, 2, seed=1, rank=r, world_size=2) for r in (0, 1)]
    assert torch.equal(torch.cat([h.batch(7)[0] for h in halves]), x)
    with pytest.raises(ValueError, match="rank 2"):
        RandomTrainBatches(windows, 2, seed=1, rank=2, world_size=2)


def test_val_windows_are_fixed_whole_batches_spread_over_the_split(shards):
    windows = TokenWindows(sorted(shards.glob("val-*.bin")), window=33, split="val")
    val = FixedValWindows(windows, count=12, batch_size=4)
    assert len(val) == 12 == val.total
    assert val.indices[0] == 0 and val.indices[-1] == windows.num_windows - 1
    assert np.all(np.diff(val.indices) > 0)
    x, y = val[3]
    assert torch.equal(x[1:], y[:-1])
    assert torch.equal(FixedValWindows(windows, count=12, batch_size=4)[3][0], x)
    # a count that is not whole batches is rounded down: one shape for every batch
    assert len(FixedValWindows(windows, count=14, batch_size=4)) == 12
    # two ranks read disjoint halves of the same windows
    ranks = [FixedValWindows(windows, 12, batch_size=2, rank=r, world_size=2) for r in (0, 1)]
    assert sorted(np.concatenate([r.indices for r in ranks])) == sorted(val.indices)


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
    assert again.train.max_steps == 30
    assert again.model.n_embd == 32
    assert again.architecture().vocab_size == 256
    raw = json.loads(path.read_text())
    raw["surprise"] = 1
    with pytest.raises(ValueError, match="surprise"):
        TrainRequest.from_dict(raw)


# --------------------------------------------------------------------------- real training


def test_training_writes_checkpoints_final_metrics_and_logs_to_mlflow(
    char_data, tmp_path, mlflow_uri, quiet_mlflow, capsys
):
    from mlflow import MlflowClient

    from pipeline.train import run_training

    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.create_experiment("train-test")
    run_id = client.create_run(experiment).info.run_id  # the orchestrator's stage run
    out = tmp_path / "out"
    request = make_request(char_data, out, sample_prompts=["The "], sample_tokens=20)
    request.mlflow_tracking_uri = mlflow_uri
    request.mlflow_run_id = run_id

    metrics = run_training(request)

    # checkpoints: every 10 steps, the last two kept, each complete; the best one beside them
    assert [step for step, _ in complete_checkpoints(out / "checkpoints")] == [20, 30]
    assert not list((out / "checkpoints").glob(".tmp-*"))
    state = torch.load(
        out / "checkpoints" / "step-000030" / "trainer_state.ckpt", weights_only=True
    )
    assert state["global_step"] == 30
    assert "state_dict" not in state  # weights live in model.safetensors only
    assert state["optimizer_states"] and state["lr_schedulers"]
    # a checkpoint at a validation step is written after it: its history holds that val
    assert [s for s, _ in state["loss_history"]["val"]] == [10, 20, 30]
    best = json.loads((out / "checkpoints" / "best" / "best.json").read_text())
    assert best["val_loss"] == min(v for _, v in state["loss_history"]["val"])
    assert metrics["best_val_loss"] == best["val_loss"]
    assert load_model(out / "checkpoints" / "best").config.n_embd == 32

    # final model = the last checkpoint's weights; tokenizer copied
    final = final_weights(out)
    last = load_model(out / "checkpoints" / "step-000030").state_dict()
    assert all(torch.equal(final[k], last[k]) for k in final)
    tokenizer = Path(request.tokenizer_path)
    assert (out / "final" / "tokenizer.json").read_text() == tokenizer.read_text()
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # metrics: the model learned something about English characters in 30 steps
    written = json.loads((out / "train_metrics.json").read_text())
    assert written == metrics
    assert metrics["steps"] == 30
    assert metrics["tokens_seen"] == 30 * 8 * 32
    assert metrics["val_tokens"] == 4 * 8 * 32
    assert metrics["num_params"] == load_model(out / "final").num_params(non_embedding=False)
    assert metrics["val_loss"] < math.log(request.data.vocab_size) - 0.8
    assert metrics["val_bpb"] == pytest.approx(metrics["val_loss"] / math.log(2))
    assert metrics["val_ppl"] == pytest.approx(math.exp(metrics["val_loss"]))
    assert metrics["tokens_per_second"] > 0 and metrics["wall_seconds"] > 0
    assert metrics["steady_tokens_per_second"] > 0  # the median between log lines
    assert metrics["skipped_steps"] == 0 and metrics["arch"] == "gpt2"

    # MLflow: metrics at optimizer steps, and the run left open for its owner
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    history = {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        for key in ("train_loss", "val_loss", "val_bpb", "lr", "tokens_seen", "grad_norm")
    }
    assert [s for s, _ in history["train_loss"]] == [5, 10, 15, 20, 25, 30]
    assert [s for s, _ in history["val_loss"]] == [10, 20, 30]
    assert history["val_loss"][-1][1] == pytest.approx(metrics["val_loss"])
    assert history["val_loss"][-1][1] < history["val_loss"][0][1]
    assert history["tokens_seen"][-1] == (30, 30 * 8 * 32)
    assert all(v > 0 and math.isfinite(v) for _, v in history["grad_norm"])
    speeds = client.get_metric_history(run_id, "tokens_per_second")
    assert [m.step for m in speeds] == [5, 10, 15, 20, 25, 30] and speeds[-1].value > 0
    assert not client.get_metric_history(run_id, "mfu")  # CPU: no peak to divide by

    # sample generations after each validation: files, and artifacts of the run
    samples = sorted(p.name for p in (out / "samples").iterdir())
    assert samples == ["step-000010.txt", "step-000020.txt", "step-000030.txt"]
    text = (out / "samples" / "step-000030.txt").read_text()
    assert text.startswith("--- prompt 'The '\nThe ") and len(text) > 30
    artifacts = [a.path for a in client.list_artifacts(run_id, "samples")]
    assert artifacts == [f"samples/{name}" for name in samples]

    printed = capsys.readouterr().out
    assert "step 30/30 | train_loss" in printed and "val_loss" in printed
    assert "tok/s" in printed and "grad_norm" in printed


def test_resume_from_a_checkpoint_is_bit_exact(shards, tmp_path, quiet_mlflow):
    from pipeline.train import run_training

    out = tmp_path / "out"
    # dropout on: the restored RNG state matters too
    request = make_request(shards, out, max_steps=20, keep_last_checkpoints=5, val_batches=2)
    request.model.dropout = 0.1
    straight = run_training(request)
    straight_weights = final_weights(out)
    straight_history = json.loads((out / "train_metrics.json").read_text())

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
    assert resumed["val_loss"] == straight["val_loss"] == straight_history["val_loss"]
    assert resumed["train_loss"] == straight["train_loss"]
    state = torch.load(
        out / "checkpoints" / "step-000020" / "trainer_state.ckpt", weights_only=True
    )
    # the resumed run's loss curve is the whole curve, each validation once
    assert [s for s, _ in state["loss_history"]["val"]] == [10, 20]
    assert [s for s, _ in state["loss_history"]["train"]] == [5, 10, 15, 20]

    # started once more after it finished: nothing to train, the same outputs
    again = run_training(request)
    assert again["resumed_from_step"] == 20 and again["steps"] == 20
    assert again["val_loss"] == straight["val_loss"]
    assert all(torch.equal(final_weights(out)[k], straight_weights[k]) for k in weights)


def test_final_weights_best_takes_the_lowest_val_loss_checkpoint(shards, tmp_path, quiet_mlflow):
    """`final_weights: best` (early stopping, as nanoGPT keeps its best checkpoint): final/ holds
    the weights of checkpoints/best/, not the last step's, and the metrics say which step."""
    from pipeline.train import run_training

    out = tmp_path / "out"
    # a learning rate this high makes the last validation worse than an earlier one
    metrics = run_training(make_request(shards, out, learning_rate=0.5, final_weights="best"))
    best = json.loads((out / "checkpoints" / "best" / "best.json").read_text())
    assert metrics["final_weights"] == "best" and metrics["best_step"] == best["step"]
    assert metrics["best_val_loss"] == best["val_loss"] <= metrics["val_loss"]
    best_weights = load_file(str(out / "checkpoints" / "best" / "model.safetensors"))
    final = final_weights(out)
    assert all(torch.equal(final[k], best_weights[k]) for k in best_weights)
    last = load_file(str(out / "checkpoints" / "step-000030" / "model.safetensors"))
    if best["step"] != 30:
        assert not all(torch.equal(final[k], last[k]) for k in last)
    saved = json.loads((out / "train_metrics.json").read_text())
    assert saved["final_weights"] == "best"


def test_final_weights_best_needs_the_best_checkpoint():
    with pytest.raises(ValueError, match="final_weights: best needs keep_best_checkpoint"):
        TrainConfig(final_weights="best", keep_best_checkpoint=False)


@pytest.mark.parametrize("arch", ["llama"])
def test_llama_architecture_trains_and_saves_its_arch(shards, tmp_path, quiet_mlflow, arch):
    from pipeline.train import run_training

    out = tmp_path / "out"
    request = make_request(shards, out, max_steps=10, val_every_steps=10)
    request.model.arch = arch
    metrics = run_training(request)
    assert metrics["arch"] == arch
    model = load_model(out / "final")
    assert model.config.arch == arch and model.config.bias is False
    assert "wpe" not in model.transformer  # RoPE: no position embedding
    assert metrics["val_loss"] < math.log(request.data.vocab_size)


class InjectNonFinite(pl.Callback):
    """Fault injection: a NaN in one gradient at the given optimizer steps (1-based), and a
    record of whether each such step changed the weights or the optimizer state."""

    def __init__(self, steps: set[int]):
        self.steps = steps
        self.unchanged: dict[int, bool] = {}
        self._before: tuple[list[torch.Tensor], int] | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step + 1
        if step in self.steps:
            next(p for p in pl_module.parameters() if p.grad is not None).grad[0] = math.nan
            params = [p.detach().clone() for p in pl_module.parameters()]
            adam_steps = sum(int(s.get("step", 0)) for s in optimizer.state.values())
            self._before = (params, adam_steps)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._before is not None:
            params, adam_steps = self._before
            now = [p.detach() for p in pl_module.parameters()]
            state = trainer.optimizers[0].state.values()
            self.unchanged[trainer.global_step] = all(
                torch.equal(a, b) for a, b in zip(params, now, strict=True)
            ) and adam_steps == sum(int(s.get("step", 0)) for s in state)
            self._before = None


def test_a_non_finite_step_is_skipped_and_reported(shards, tmp_path, quiet_mlflow, capsys):
    from pipeline.train import run_training

    out = tmp_path / "out"
    request = make_request(shards, out, max_steps=8, val_every_steps=8, log_every_steps=4)
    fault = InjectNonFinite({3, 6})
    metrics = run_training(request, extra_callbacks=[fault])
    assert fault.unchanged == {3: True, 6: True}  # neither the weights nor AdamW moved
    assert metrics["skipped_steps"] == 2 and metrics["steps"] == 8
    assert math.isfinite(metrics["val_loss"])
    assert all(torch.isfinite(t).all() for t in final_weights(out).values())
    printed = capsys.readouterr().out
    assert (
        "step 3/8 | non-finite gradient norm (nan): step skipped (1 in a row, 1 in all)" in printed
    )
    assert "(1 in a row, 2 in all)" in printed


def test_repeated_non_finite_steps_stop_the_run_and_keep_the_last_good_checkpoint(
    shards, tmp_path, quiet_mlflow
):
    from pipeline.train import run_training
    from pipeline.train.lit_module import NonFiniteLossError

    out = tmp_path / "out"
    request = make_request(
        shards, out, max_steps=20, checkpoint_every_steps=2, max_bad_steps=3, val_every_steps=20
    )
    with pytest.raises(
        NonFiniteLossError, match=r"3 optimizer steps in a row \(the last at step 7\)"
    ) as err:
        run_training(request, extra_callbacks=[InjectNonFinite(set(range(5, 21)))])
    assert "step-000006" in str(err.value)  # the last good checkpoint, named
    assert [step for step, _ in complete_checkpoints(out / "checkpoints")] == [4, 6]
    assert not (out / "final").exists()
    # the checkpoint at step 6 holds the weights of step 4: the skipped steps changed nothing
    at4, at6 = (load_model(out / "checkpoints" / f"step-00000{s}").state_dict() for s in (4, 6))
    assert all(torch.equal(at4[k], at6[k]) and torch.isfinite(at6[k]).all() for k in at4)
    # and the run resumes from it once the cause is gone
    resumed = run_training(request)
    assert resumed["resumed_from_step"] == 6 and resumed["steps"] == 20


def test_cli_reports_failures_with_a_clear_message_and_exit_status(tmp_path, capsys):
    from pipeline.train.__main__ import main

    assert main([]) == 2
    request = make_request(tmp_path / "no-such-shards", tmp_path / "out")
    path = request.to_json(tmp_path / "request.json")
    assert main([str(path)]) == 1
    err = capsys.readouterr().err
    assert "train failed: FileNotFoundError: token shards folder not found" in err
    assert not (tmp_path / "out" / "final").exists()


def _subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}


@pytest.mark.slow  # ~15-30 s (three processes start); .ci/run runs it explicitly
def test_ddp_on_two_cpu_processes_matches_one_process_with_the_same_global_batch(
    shards, tmp_path, quiet_mlflow
):
    """`python -m pipeline.train` with strategy ddp on 2 CPU processes (gloo), batch 4 each,
    against one process with batch 8: the same windows, the same updates up to float sums."""
    from pipeline.train import run_training

    settings = dict(max_steps=12, val_every_steps=6, checkpoint_every_steps=6, log_every_steps=3)
    single = run_training(make_request(shards, tmp_path / "one", batch_size=8, **settings))

    out = tmp_path / "ddp"
    request = make_request(
        shards, out, batch_size=4, strategy="ddp", accelerator="cpu", devices=2, **settings
    )
    path = request.to_json(tmp_path / "ddp.json")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.train", str(path)],
        cwd=tmp_path,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "on cpu x2" in done.stdout
    ddp = json.loads((out / "train_metrics.json").read_text())
    assert ddp["world_size"] == 2 and ddp["tokens_seen"] == single["tokens_seen"]
    assert ddp["val_tokens"] == single["val_tokens"]
    assert ddp["val_loss"] == pytest.approx(single["val_loss"], abs=2e-4)
    assert ddp["train_loss"] == pytest.approx(single["train_loss"], abs=1e-3)
    a, b = final_weights(out), final_weights(tmp_path / "one")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3


def test_a_killed_training_process_resumes_to_the_same_weights(shards, tmp_path, quiet_mlflow):
    """SIGKILL a real `python -m pipeline.train` after its first checkpoint, start it again:
    the result is the run that was never interrupted, bit for bit (CPU, fp32)."""
    from pipeline.train import run_training

    # dropout on, so the restored RNG matters; checkpoints every 10 steps: time to kill between
    settings = dict(max_steps=60, checkpoint_every_steps=10, val_every_steps=30, log_every_steps=10)
    out = tmp_path / "out"
    request = make_request(shards, out, **settings)
    request.model.dropout = 0.1
    path = request.to_json(tmp_path / "request.json")
    command = [sys.executable, "-m", "pipeline.train", str(path)]

    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=_subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while latest_checkpoint(out / "checkpoints") is None and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    log = process.communicate()[0].decode()
    assert process.returncode == -signal.SIGKILL, log
    killed_at = int(latest_checkpoint(out / "checkpoints").name.split("-")[1])
    print(f"killed at step {killed_at}")
    assert 0 < killed_at < 60, log
    assert not (out / "final").exists()

    again = subprocess.run(
        command, cwd=tmp_path, env=_subprocess_env(), capture_output=True, text=True
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming from" in again.stdout
    assert "step 60/60" in again.stdout
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["steps"] == 60 and metrics["resumed_from_step"] == killed_at

    # The same request run straight through gives the very same weights and losses.
    straight_out = tmp_path / "straight"
    straight = make_request(shards, straight_out, **settings)
    straight.model.dropout = 0.1
    reference = run_training(straight)
    weights, expected = final_weights(out), final_weights(straight_out)
    assert all(torch.equal(weights[k], expected[k]) for k in weights)
    assert metrics["val_loss"] == reference["val_loss"]
    assert metrics["train_loss"] == reference["train_loss"]
