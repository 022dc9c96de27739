"""The command line: bad configs and bad stage names fail fast with one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_config_typo_exits_2_naming_the_key(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("sources: [{type: jsonl, path: x.jsonl}]\ntrain: {max_stepz: 3}\n")
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert "train.max_stepz: unknown key" in err and "max_steps" in err


def test_bad_override_exits_2(capsys):
    assert main(["run", str(REPO / "configs" / "quickstart.yaml"), "--set", "model.n_head=3"]) == 2
    assert "divisible" in capsys.readouterr().err


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nothing"), "hello"]) == 2
    assert "no such model folder" in capsys.readouterr().err


def test_only_and_from_are_exclusive():
    with pytest.raises(SystemExit):
        main(["run", "c.yaml", "--only", "clean", "--from", "dedup"])


def test_flows_module_entry_point_takes_the_same_arguments(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("sources: []\n")
    proc = subprocess.run(
        [sys.executable, "-m", "flows.pipeline", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert "sources" in proc.stderr
