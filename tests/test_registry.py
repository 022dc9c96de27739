"""The model registry: versions with their metrics and provenance, the promotion rule, and
every alias change recorded in the tags of the versions it touches."""

from __future__ import annotations

import re

import pytest
from mlflow import MlflowClient
from tiny_models import mlflow_store, save_tiny_model, train_tokenizer

from flows.cli import main as cli_main
from pipeline.tracking.registry import (
    PromotionRule,
    alias_history,
    better,
    decide,
    git_commit,
    list_versions,
    promote,
    register_model_dir,
)
from pipeline.tracking.runs import Tracker

NAME = "tiny-gpt"
RULE = PromotionRule(metric="val_bpb", mode="min", min_improvement=0.05)


def test_promotion_rule_with_a_minimum_improvement():
    assert better(1.9, 2.0, "min", 0.05) and not better(1.97, 2.0, "min", 0.05)
    assert better(0.36, 0.30, "max", 0.05) and not better(0.34, 0.30, "max", 0.05)
    assert not better(2.0, 2.0, "min")  # a tie keeps the champion
    promoted, reason = decide(RULE, 1.97, "1", 2.0)
    assert not promoted
    assert "does not beat champion v1" in reason and "val_bpb < 1.95" in reason


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Three registrations under the rule: v1 first, v2 better by too little, v3 better."""
    root = tmp_path_factory.mktemp("registry")
    uri = mlflow_store(root)
    model_dir = save_tiny_model(root / "model", train_tokenizer(300))
    tracker = Tracker(uri, "registry-test", artifact_root=root / "artifacts")
    results = []
    for number, bpb in enumerate((2.0, 1.97, 1.90), 1):
        run = tracker.start_run(
            f"register-{number}", tags={"prefect.flow_run_id": f"flow-{number}"}
        )
        results.append(
            register_model_dir(
                uri,
                run,
                model_dir,
                NAME,
                {"val_bpb": bpb, "hellaswag_acc": 0.25 + number / 100},
                RULE,
                tags={"llmpipe.data_fingerprint": "d1", "llmpipe.config_hash": f"c{number}"},
            )
        )
        tracker.end_run(run)
    return uri, results


def test_versions_carry_metrics_and_provenance(registry):
    uri, results = registry
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    v2 = client.get_model_version(NAME, "2")
    assert float(v2.tags["val_bpb"]) == 1.97
    assert v2.tags["llmpipe.data_fingerprint"] == "d1"
    assert v2.tags["llmpipe.config_hash"] == "c2"
    assert v2.tags["prefect.flow_run_id"] == "flow-2"
    assert "does not beat champion v1" in v2.tags["llmpipe.promotion"]
    assert [r["promoted"] for r in results] == [True, False, True]


def test_aliases_follow_the_rule_and_every_change_is_recorded(registry):
    uri, _ = registry
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "3"
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "3"
    v1 = [(e["alias"], e["change"], e["by"]) for e in alias_history(uri, NAME, 1)]
    assert v1 == [
        ("challenger", "set", "rule"),
        ("champion", "set", "rule"),
        ("challenger", "removed", "rule"),  # to v2
        ("champion", "removed", "rule"),  # to v3
    ]
    removed = alias_history(uri, NAME, 1)[-1]["reason"]
    assert removed.startswith("@champion moved to v3: val_bpb 1.9 beats champion v1")
    assert [(e["alias"], e["change"]) for e in alias_history(uri, NAME, 2)] == [
        ("challenger", "set"),
        ("challenger", "removed"),
    ]


def test_promote_by_hand_is_recorded_with_its_reason(registry, capsys):
    uri, _ = registry
    args = ["models", "promote", NAME, "1", "--reason", "v3 regressed on a task we care about"]
    assert cli_main([*args, "--tracking-uri", uri]) == 0
    assert "now @champion (it was v3)" in capsys.readouterr().out
    last = alias_history(uri, NAME, 1)[-1]
    assert (last["alias"], last["change"], last["by"]) == ("champion", "set", "manual")
    assert last["reason"] == "v3 regressed on a task we care about"
    assert alias_history(uri, NAME, 3)[-1]["change"] == "removed"
    promote(uri, NAME, 3, "back to the rule's choice")  # leave the registry as the rule had it
    with pytest.raises(Exception, match="not found|does not exist|RESOURCE_DOES_NOT_EXIST"):
        promote(uri, NAME, 99)


def test_models_list_compares_metrics_across_versions(registry, capsys):
    uri, _ = registry
    rows = list_versions(uri, NAME, metrics_only=True)
    assert [r["version"] for r in rows] == [1, 2, 3]
    assert [r["val_bpb"] for r in rows] == [2.0, 1.97, 1.9]
    assert not any(k.startswith("llmpipe.") for r in rows for k in r)
    assert cli_main(["models", "list", "--metrics", "--tracking-uri", uri]) == 0
    listing = capsys.readouterr().out
    assert "val_bpb" in listing and "hellaswag_acc" in listing and "1.9700" in listing
    assert cli_main(["models", "list", "--tracking-uri", uri]) == 0
    assert "champion" in capsys.readouterr().out


def test_git_commit_of_this_checkout():
    tags = git_commit()
    assert re.fullmatch(r"[0-9a-f]{40}", tags["llmpipe.git_commit"])
    assert tags["llmpipe.git_dirty"] in ("true", "false")


def test_eval_and_export_take_a_registry_uri(registry, tmp_path, capsys):
    uri, _ = registry
    (tmp_path / "mc.jsonl").write_text(
        '{"context": "The cat sat on the", "choices": ["mat.", "moon."], "label": 0}\n'
    )
    (tmp_path / "eval.yaml").write_text(
        "sources: [{type: text, path: x.txt}]\n"
        "evaluate: {tasks: [{type: multiple_choice, name: cats, path: mc.jsonl}]}\n"
    )
    model = f"models:/{NAME}/2"
    args = ["eval", model, "--config", str(tmp_path / "eval.yaml"), "--tracking-uri", uri]
    assert cli_main([*args, "--record"]) == 0
    assert f"the tags of {NAME}/2" in capsys.readouterr().out
    rows = {r["version"]: r for r in list_versions(uri, NAME, metrics_only=True)}
    assert rows[2]["cats_acc"] in (0.0, 1.0) and "cats_acc" not in rows[1]

    assert (
        cli_main(
            ["export", f"models:/{NAME}@champion", str(tmp_path / "hf"), "--tracking-uri", uri]
        )
        == 0
    )
    assert (tmp_path / "hf" / "config.json").is_file()


def test_config_hash_follows_what_changes_outputs():
    from pipeline.config import config_hash, validate_config

    base = {"sources": [{"type": "text", "path": "x.txt"}]}
    same = validate_config({**base, "execution": {"workers": 4}, "workdir": "elsewhere"})
    assert config_hash(validate_config(base)) == config_hash(same)  # operational only
    assert config_hash(validate_config(base)) != config_hash(
        validate_config({**base, "train": {"max_steps": 7}})
    )


def test_registering_leaves_this_process_mlflow_uris_as_they_were(tmp_path, monkeypatch):
    """A register must not point every later MLflow call in the process (a sweep's next variant,
    a server, the next test) at its store: the fluent URIs and their variables are put back."""
    import os

    import mlflow

    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(key, raising=False)
    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    uri = mlflow_store(tmp_path)
    assert uri != before[0]
    tracker = Tracker(uri, "uris-test", artifact_root=tmp_path / "artifacts")
    run = tracker.start_run("register")
    model_dir = save_tiny_model(tmp_path / "model", train_tokenizer(300))
    result = register_model_dir(uri, run, model_dir, NAME, {"val_bpb": 2.0}, RULE)
    tracker.end_run(run)
    assert result["version"] == "1"
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert "MLFLOW_REGISTRY_URI" not in os.environ


# Registers as the register stage does, in its own process, and is SIGKILLed right after the
# registry has created the version: before any alias or promotion tag.
_KILLED_AFTER_CREATE = """
import os, signal, sys
from pathlib import Path

import mlflow

from pipeline.tracking.registry import PromotionRule, register_model_dir

create = mlflow.register_model


def create_then_die(*args, **kwargs):
    create(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)


mlflow.register_model = create_then_die
uri, run_id, model_dir = sys.argv[1:]
register_model_dir(uri, run_id, Path(model_dir), "killed-gpt", {"val_bpb": 2.0}, PromotionRule(),
                   tags={"llmpipe.data_fingerprint": "d1"}, registration_key="fp-register-1")
"""


def test_a_registration_killed_after_the_version_was_created_is_completed_by_the_rerun(
    tmp_path,
):
    import subprocess
    import sys

    uri = mlflow_store(tmp_path)
    model_dir = save_tiny_model(tmp_path / "model", train_tokenizer(300))
    tracker = Tracker(uri, "registry-kill", artifact_root=tmp_path / "artifacts")
    killed_run = tracker.start_run("register")
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_AFTER_CREATE, uri, killed_run, str(model_dir)],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    orphan = list_versions(uri, "killed-gpt")
    assert [(v["version"], v["aliases"]) for v in orphan] == [(1, "")]  # no aliases yet
    assert "llmpipe.promotion" not in orphan[0]

    rerun = tracker.start_run("register")  # the rerun's own stage run

    def register(key: str, bpb: float = 2.0) -> dict:
        return register_model_dir(
            uri,
            rerun,
            model_dir,
            "killed-gpt",
            {"val_bpb": bpb},
            PromotionRule(),
            tags={"llmpipe.data_fingerprint": "d1"},
            registration_key=key,
        )

    result = register("fp-register-1")
    assert result["version"] == "1" and result["promoted"]
    versions = list_versions(uri, "killed-gpt")
    assert len(versions) == 1, versions
    only = versions[0]
    assert only["aliases"] == "challenger,champion"
    assert only["llmpipe.registration_key"] == "fp-register-1"
    assert only["llmpipe.data_fingerprint"] == "d1" and only["val_bpb"] == "2.0"
    assert "first version" in only["llmpipe.promotion"]
    assert [e["alias"] for e in alias_history(uri, "killed-gpt", 1)] == ["challenger", "champion"]
    # Run again after it completed: still one version, nothing moved twice.
    again = register("fp-register-1")
    assert again["version"] == "1" and again["promoted"]
    assert len(list_versions(uri, "killed-gpt")) == 1
    assert len(alias_history(uri, "killed-gpt", 1)) == 2
    # Another registration key (another run's fingerprint) is a new version.
    other = register("fp-register-2", bpb=1.0)
    assert other["version"] == "2"
