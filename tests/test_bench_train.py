"""The training benchmarks run: the GPU throughput script in its tiny CPU mode (the same code
path as on a GPU), with a plain loop beside our Trainer reaching the same loss."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_benchmark_runs_tiny_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.md"
    done = subprocess.run(
        [sys.executable, "bench/train_gpu.py", "--tiny", "--steps", "4", "--warmup", "2"]
        + ["--out", str(out)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = out.read_text()
    assert "| our Lightning Trainer |" in report and "| plain PyTorch loop |" in report
    assert "n/a (no peak)" in report  # no MFU without a GPU peak
    losses = re.findall(r"\| (\d+\.\d{4}) \|\n", report)
    assert len(losses) == 2 and losses[0] == losses[1]  # the same work, the same loss


SHARED = REPO.parent / "shared" / "data"


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="the fine-tuning tasks read ../shared/data")
def test_gpu_check_runs_every_part_tiny_on_the_cpu(tmp_path):
    """bench/gpu_check.py --tiny: the device script's code, every part, at toy sizes, so that it
    cannot rot between GPU runs (throughput, Shakespeare and its reference, resume, fine-tuning
    full and LoRA, the levers)."""
    out = tmp_path / "gpu_check.md"
    done = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--tiny", "--out", str(out)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    report = out.read_text()
    parts = re.findall(r"^\| (\w+) \| (ok|FAILED[^|]*|TIMED OUT|not run) \|", report, re.M)
    assert [name for name, _ in parts] == [
        "environment",
        "throughput",
        "shakespeare",
        "nanogpt",
        "resume",
        "finetune",
        "batch_size",
        "tf32",
        "max_autotune",
    ]
    assert all(status == "ok" for _, status in parts), parts
    # the same work on both sides of the throughput table: the same loss
    assert "| our Lightning Trainer |" in report and "| plain PyTorch loop |" in report
    # every fine-tuning task scored before and after, with and without LoRA
    assert "| every task scored before and after (full) | all | yes |" in report
    assert "| every task scored before and after (LoRA r=16) | all | yes |" in report
    # a killed run resumed (on the CPU in fp32: bit-exact)
    assert re.search(r"\| straight vs killed at step \d+ \+ resumed \| .* \| yes \|", report)
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert numbers["resume"]["numbers"]["resume"]["bit_exact"] is True
