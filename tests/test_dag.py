"""Planning: fingerprints flow down the DAG, and --only / --from pick the right stages."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.dag import UpstreamMissing, plan, run_stage, select, stage_names

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
STAGE_NAMES = stage_names(load_config(QUICKSTART))  # no fine-tuning in it


def fingerprints(overrides: list[str], tmp_path: Path) -> dict[str, str]:
    config = load_config(QUICKSTART, overrides)
    return {p.name: p.output.fingerprint for p in plan(config, tmp_path, "sqlite:///x.db")}


def test_a_change_reruns_its_stage_and_everything_downstream(tmp_path):
    base = fingerprints([], tmp_path)
    assert list(base) == list(STAGE_NAMES)
    clean = fingerprints(["clean.min_words=5"], tmp_path)
    assert [s for s in STAGE_NAMES if clean[s] != base[s]] == list(STAGE_NAMES[1:])
    train = fingerprints(["train.learning_rate=0.01"], tmp_path)
    assert [s for s in STAGE_NAMES if train[s] != base[s]] == ["pretrain", "evaluate", "register"]


def test_operational_settings_change_nothing(tmp_path):
    base = fingerprints([], tmp_path)
    assert (
        fingerprints(["train.log_every_steps=1", "ingest.max_docs_per_shard=10000"], tmp_path)
        == base
    )
    assert fingerprints(["clean.max_docs_per_shard=7"], tmp_path) == base


def test_registry_is_part_of_the_register_fingerprint(tmp_path):
    config = load_config(QUICKSTART)
    a = {p.name: p.output.fingerprint for p in plan(config, tmp_path, "sqlite:///a.db")}
    b = {p.name: p.output.fingerprint for p in plan(config, tmp_path, "sqlite:///b.db")}
    assert [s for s in STAGE_NAMES if a[s] != b[s]] == ["register"]


def test_select_only_and_from(tmp_path):
    stages = plan(load_config(QUICKSTART), tmp_path)
    assert [p.name for p in select(stages, only=["clean", "dedup"])] == ["clean", "dedup"]
    assert [p.name for p in select(stages, start="pretrain")] == [
        "pretrain",
        "evaluate",
        "register",
    ]
    with pytest.raises(ValueError, match="unknown stage 'train'"):
        select(stages, only=["train"])


def test_a_stage_without_its_upstream_says_which(tmp_path):
    config = load_config(QUICKSTART)
    clean = next(p for p in plan(config, tmp_path) if p.name == "clean")
    with pytest.raises(UpstreamMissing, match="ingest"):
        run_stage(clean, config)


def test_finetune_sits_between_pretrain_and_evaluate(tmp_path):
    path = REPO / "configs" / "quickstart-finetune.yaml"

    def prints(overrides: list[str]) -> dict[str, str]:
        config = load_config(path, overrides)
        return {p.name: p.output.fingerprint for p in plan(config, tmp_path, "sqlite:///x.db")}

    base = prints([])
    assert list(base)[-4:] == ["pretrain", "finetune", "evaluate", "register"]
    changed = prints(["finetune.train.learning_rate=0.01"])
    assert [s for s in base if changed[s] != base[s]] == ["finetune", "evaluate", "register"]
    weights = prints(["finetune.tasks.0.weight=3"])
    assert [s for s in base if weights[s] != base[s]] == ["finetune", "evaluate", "register"]
    assert prints(["finetune.train.log_every_steps=1"]) == base  # operational, even nested
    # without tasks there is no finetune stage, and the rest is planned as before
    plain = prints(["finetune.tasks=[]"])
    assert "finetune" not in plain
    with pytest.raises(ValueError, match="'finetune' is not part of this config's pipeline"):
        select(plan(load_config(path, ["finetune.tasks=[]"]), tmp_path), only=["finetune"])


def test_a_stage_whose_lease_names_a_reused_pid_runs_at_once(tmp_path):
    """The restart case: a dead run's lease whose PID now belongs to a live, unrelated process
    (this test's own). The stage takes it over instead of waiting up to LEASE_WAIT_SECONDS."""
    import json

    from pipeline.leases import lease_owner

    (tmp_path / "a.txt").write_text("A short document about leases and restarts.\n")
    config_path = tmp_path / "c.yaml"
    config_path.write_text("sources: [{type: text, path: a.txt}]\n")
    ingest = plan(load_config(config_path), tmp_path / "work")[0]
    me = lease_owner()
    ingest.output.lease.parent.mkdir(parents=True)
    ingest.output.lease.write_text(json.dumps({**me, "process_start": me["process_start"] - 1}))
    said: list[str] = []
    result = run_stage(ingest, load_config(config_path), log=said.append)
    assert result.reused is False and ingest.output.complete()
    assert not ingest.output.lease.exists()
    assert any("taking over" in line and "now belongs to another process" in line for line in said)
