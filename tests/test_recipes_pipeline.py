"""The data recipes in the DAG: where decontaminate and quality sit, what their settings re-run,
and one real Prefect flow (real MLflow store, real training on the CPU) with decontamination,
a trained quality classifier and a source mixture, then a second run that reuses the
classifier from its `runs:/` URI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from pipeline.config import config_hash, load_config
from pipeline.dag import plan, stage_names

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
SAMPLE = REPO / "data" / "sample"


def _recipes_config(tmp_path: Path, **changes) -> Path:
    """The quickstart, shrunk, with the three recipes on, and a perplexity task on text it
    trains on (the WikiText-2 sample articles), so contamination has something to find."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    for source in raw["sources"]:
        source["path"] = str((QUICKSTART.parent / source["path"]).resolve())
    raw["evaluate"]["tasks"] = [
        {"type": "heldout"},
        {"type": "multiple_choice", "name": "hellaswag_sample", "path": str(SAMPLE / "hellaswag_val_sample.jsonl"), "limit": 8},
        {"type": "perplexity", "name": "wiki", "path": str(SAMPLE / "wikitext2_test_articles.jsonl.gz"), "limit": 3},
    ]  # fmt: skip
    raw["decontaminate"] = {"enabled": True, "action": "report"}
    raw["quality"] = {
        "enabled": True,
        "positives": [{"type": "jsonl", "name": "reference", "path": str(SAMPLE / "wikitext2_test_articles.jsonl.gz")}],
        "negative_sources": ["botchan", "squad"],
        "keep_fraction": 0.9,
        "hash_bits": 16,
    }  # fmt: skip
    raw["shards"]["mixture"] = {
        "weights": {"wikitext2": 0.6, "squad": 0.4, "botchan": 0, "ftfy": 0, "xsum_news": 0}
    }
    raw["model"].update(n_layer=1, n_head=2, n_embd=32, block_size=64)
    raw["tokenizer"]["vocab_size"] = 512
    raw["train"].update(max_steps=6, batch_size=4, warmup_steps=1, val_every_steps=3,
                        val_batches=1, checkpoint_every_steps=3, progress_bar=False)  # fmt: skip
    raw["evaluate"].update(val_batches=2, max_new_tokens=4)
    raw["register"]["model_name"] = "recipes-gpt"
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        raw[section][key] = value
    path = tmp_path / "recipes.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _fingerprints(path: Path, tmp_path: Path, overrides=()) -> dict[str, str]:
    config = load_config(path, list(overrides))
    return {p.name: p.output.fingerprint for p in plan(config, tmp_path, "sqlite:///x.db")}


def test_the_recipe_stages_sit_between_dedup_and_the_tokenizer(tmp_path):
    path = _recipes_config(tmp_path)
    assert list(stage_names(load_config(path)))[:7] == [
        "ingest", "clean", "dedup", "decontaminate", "quality", "tokenizer", "shards",
    ]  # fmt: skip
    assert "decontaminate" not in stage_names(load_config(QUICKSTART))
    base = _fingerprints(path, tmp_path)
    plain = _fingerprints(path, tmp_path, ["decontaminate.enabled=false", "quality.enabled=false"])
    assert [s for s in plain if plain[s] != base.get(s)] == [
        "tokenizer", "shards", "pretrain", "evaluate", "register",
    ]  # fmt: skip
    # a quality setting re-runs quality and what follows, never decontaminate
    keep = _fingerprints(path, tmp_path, ["quality.keep_fraction=0.5"])
    assert [s for s in base if keep[s] != base[s]] == [
        "quality", "tokenizer", "shards", "pretrain", "evaluate", "register",
    ]  # fmt: skip
    # a mixture re-runs the shards and what follows, not the tokenizer
    mix = _fingerprints(path, tmp_path, ["shards.mixture.weights.squad=0.5"])
    assert [s for s in base if mix[s] != base[s]] == ["shards", "pretrain", "evaluate", "register"]


def test_switched_off_recipes_change_no_fingerprint_nor_the_config_hash(tmp_path):
    off = load_config(
        QUICKSTART, ["decontaminate.enabled=false", "quality.enabled=false", "quality.seed=1"]
    )
    quickstart = load_config(QUICKSTART)
    assert config_hash(off) == config_hash(quickstart)
    ours = {p.name: p.output.fingerprint for p in plan(off, tmp_path)}
    theirs = {p.name: p.output.fingerprint for p in plan(quickstart, tmp_path)}
    assert ours == theirs
    # and a recipe switched on is part of the hash
    assert config_hash(load_config(QUICKSTART, ["quality.seed=2"])) != config_hash(quickstart)


@pytest.fixture(scope="module")
def flow_runs(tmp_path_factory, prefect_server):
    from flows.pipeline import pipeline_flow

    tmp = tmp_path_factory.mktemp("recipes")
    first = pipeline_flow(str(_recipes_config(tmp)), workdir=str(tmp / "work"))
    return tmp, first


@pytest.mark.slow
def test_a_flow_with_the_recipes_reports_contamination_quality_and_mixture(flow_runs):
    tmp, first = flow_runs
    stages = first["stages"]
    contamination = stages["decontaminate"]["contamination"]["sets"]
    assert contamination["wiki"]["found"] >= 50 and contamination["hellaswag_sample"]["found"] == 0
    rows = {(r["task"], r["metric"]): r for r in stages["evaluate"]["eval_table"]}
    assert rows[("wiki", "bpb")]["contamination"].endswith("contaminated")
    assert rows[("hellaswag_sample", "acc")]["contamination"] == "clean"
    assert stages["evaluate"]["metrics"]["wiki_contaminated_fraction"] > 0.8
    quality = stages["quality"]
    assert quality["metrics"]["classifier_auc"] > 0.8
    mixture = stages["shards"]["mixture"]
    assert mixture["max_share_error"] <= 0.02
    client = MlflowClient(first["tracking_uri"])
    run = client.get_run(quality["stage_run_id"])
    assert {a.path for a in client.list_artifacts(run.info.run_id, "classifier")} == {
        "classifier/classifier.json",
        "classifier/model.safetensors",
    }
    decont = stages["decontaminate"]["stage_run_id"]
    assert "contamination.json" in {a.path for a in client.list_artifacts(decont)}
    summary = client.download_artifacts(decont, "summary.md", str(tmp))
    assert "## Contamination (action: report)" in Path(summary).read_text()


@pytest.mark.slow
def test_a_classifier_is_reused_from_its_runs_uri(flow_runs):
    from flows.pipeline import pipeline_flow

    tmp, first = flow_runs
    uri = f"runs:/{first['stages']['quality']['stage_run_id']}/classifier"
    (tmp / "again").mkdir(exist_ok=True)
    path = _recipes_config(tmp / "again", **{"quality.classifier": uri, "quality.positives": []})
    second = pipeline_flow(
        str(path),
        workdir=str(tmp / "work"),
        only=["ingest", "clean", "dedup", "decontaminate", "quality"],
    )
    assert second["stages"]["decontaminate"]["cached"]  # same documents, same eval files
    reused = second["stages"]["quality"]
    assert not reused["cached"]
    assert reused["quality"]["classifier"]["reused_from"] == uri
    first_scores = json.dumps(first["stages"]["quality"]["quality"]["histogram"])
    assert json.dumps(reused["quality"]["histogram"]) == first_scores
