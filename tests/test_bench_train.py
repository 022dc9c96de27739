"""The training benchmarks run: the GPU throughput script in its tiny CPU mode (the same code
path as on a GPU), with a plain loop beside our Trainer reaching the same loss."""

from __future__ import annotations

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
