"""The evaluation suite on a small real GPT: one table, files, skips, fingerprints, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from tiny_models import SAMPLE, save_tiny_model, train_tokenizer

from flows.cli import main as cli_main
from pipeline.config import EvaluateConfig, validate_config
from pipeline.dag import plan
from pipeline.evaluate import eval_table, run_evaluation


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model"), train_tokenizer(), block_size=512)


def test_suite_writes_one_table_and_skips_absent_files(model_dir, tmp_path):
    (tmp_path / "doc.txt").write_text("The history of the town. " * 20)
    cfg = EvaluateConfig.model_validate(
        {
            "tasks": [
                {"type": "heldout"},
                {"type": "perplexity", "name": "doc", "path": "doc.txt"},
                {
                    "type": "multiple_choice",
                    "name": "hs",
                    "path": str(SAMPLE / "hellaswag_val_sample.jsonl"),
                    "limit": 5,
                },
                {"type": "lambada", "path": "absent.jsonl", "missing": "skip"},
                {"type": "generations"},
            ],
            "prompts": ["The history of"],
            "max_new_tokens": 5,
        }
    )
    out = tmp_path / "out"
    result = run_evaluation(model_dir, cfg, str(tmp_path), out, log=lambda _: None)
    table = eval_table(result)
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == [
        "task",
        "metric",
        "value",
        "stderr",
        "examples",
        "method",
        "note",
    ]
    assert {("doc", "bpb"), ("hs", "acc"), ("hs", "acc_norm"), ("generations", "samples")} <= set(
        zip(table.task, table.metric, strict=True)
    )
    # No val shards outside the pipeline, no lambada file: both skipped with the reason.
    skipped = {s["task"]: s["reason"] for s in result["skipped"]}
    assert set(skipped) == {"val", "lambada"}
    assert table[table.task == "lambada"].note.iloc[0].startswith("skipped:")
    assert (
        result["metrics"]["hs_acc"]
        == table[(table.task == "hs") & (table.metric == "acc")].value.iloc[0]
    )
    assert 0 <= result["metrics"]["hs_acc"] <= 1
    assert table[table.task == "hs"].examples.iloc[0] == 5
    assert "acc_norm" in table[table.task == "hs"].method.iloc[0]
    assert result["generations"][0]["text"].startswith("The history of")
    for name in (
        "eval_table.csv",
        "eval_table.json",
        "metrics.json",
        "generations.jsonl",
        "hs_examples.jsonl",
    ):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text()) == result["metrics"]
    assert len((out / "hs_examples.jsonl").read_text().splitlines()) == 5


def _pipeline_config(tmp_path: Path, eval_path: str) -> dict:
    return {
        "sources": [{"type": "text", "path": str(SAMPLE / "botchan.txt")}],
        "base_dir": str(tmp_path),
        "evaluate": {
            "tasks": [
                {"type": "heldout"},
                {"type": "lambada", "path": eval_path, "missing": "skip"},
            ]
        },
    }


def test_evaluate_reruns_when_an_eval_file_appears_or_changes(tmp_path):
    def fingerprints():
        config = validate_config(_pipeline_config(tmp_path, "lambada.jsonl"))
        return {p.name: p.output.fingerprint for p in plan(config, tmp_path / "work")}

    absent = fingerprints()
    (tmp_path / "lambada.jsonl").write_text('{"text": "a b"}\n')
    present = fingerprints()
    (tmp_path / "lambada.jsonl").write_text('{"text": "a c"}\n')
    changed = fingerprints()
    assert absent["pretrain"] == present["pretrain"] == changed["pretrain"]
    assert len({absent["evaluate"], present["evaluate"], changed["evaluate"]}) == 3
    assert len({absent["register"], present["register"], changed["register"]}) == 3


def test_eval_command_on_a_checkpoint(model_dir, tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text(
        "sources: [{type: text, path: x.txt}]\n"
        "evaluate:\n"
        "  tasks:\n"
        f"    - {{type: multiple_choice, name: hs, path: {SAMPLE / 'hellaswag_val_sample.jsonl'}}}\n"
        "    - {type: generations}\n"
        "  prompts: [Once upon a time]\n"
        "  max_new_tokens: 4\n"
    )
    out = tmp_path / "out"
    args = ["eval", str(model_dir), "--config", str(config), "--tasks", "hs", "--limit", "3"]
    assert cli_main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "acc_norm" in printed and "lm-eval-harness multiple_choice" in printed
    rows = json.loads((out / "eval_table.json").read_text())
    assert {r["task"] for r in rows} == {"model", "hs"}  # generations not asked for
    assert all(r["examples"] == 3 for r in rows if r["task"] == "hs")

    assert cli_main(["eval", str(model_dir), "--config", str(config), "--tasks", "nope"]) == 2
    assert "unknown task(s) nope" in capsys.readouterr().err
