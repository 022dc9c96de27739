"""End to end: the quickstart config (shrunk) through the real Prefect flow and a real MLflow store.

Checks what a user would: the registry has a `@champion`, `llmpipe generate` on it produces
text, the counts add up, the MLflow run tree and Prefect records point to each other, a re-run
reuses every stage, and changing a training setting re-runs only pretrain, evaluate and register.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from flows.cli import main as cli_main
from flows.pipeline import pipeline_flow
from pipeline.config import load_config
from pipeline.dag import stage_names
from pipeline.generate import resolve_model_dir
from pipeline.outputs import read_manifest

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
STAGE_NAMES = stage_names(load_config(QUICKSTART))  # no fine-tuning in it
# Small enough for CI, big enough to exercise every stage for real.
SHRINK = [
    "model.n_layer=2",
    "model.n_embd=64",
    "model.n_head=2",
    "model.block_size=64",
    "tokenizer.vocab_size=1024",
    "train.max_steps=30",
    "train.batch_size=8",
    "train.warmup_steps=5",
    "train.val_every_steps=15",
    "train.val_batches=2",
    "train.checkpoint_every_steps=15",
    "train.progress_bar=false",
    "evaluate.val_batches=4",
    "evaluate.max_new_tokens=12",
    "register.model_name=e2e-gpt",
]
DATA_STAGES = ("ingest", "clean", "dedup", "tokenizer", "shards")
MODEL_STAGES = ("pretrain", "evaluate", "register")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_server):
    """First run, unchanged re-run, and a run with one training setting changed."""
    workdir = tmp_path_factory.mktemp("work")
    first = pipeline_flow(QUICKSTART, workdir=str(workdir), overrides=SHRINK)
    again = pipeline_flow(QUICKSTART, workdir=str(workdir), overrides=SHRINK)
    changed = pipeline_flow(
        QUICKSTART, workdir=str(workdir), overrides=[*SHRINK, "train.learning_rate=0.004"]
    )
    return workdir, first, again, changed


def test_every_stage_ran_then_was_reused(runs):
    _, first, again, changed = runs
    assert list(first["stages"]) == list(STAGE_NAMES)
    assert not any(r["cached"] for r in first["stages"].values())
    assert all(r["cached"] for r in again["stages"].values())
    for name in DATA_STAGES:
        assert changed["stages"][name]["cached"], name
    for name in MODEL_STAGES:
        assert not changed["stages"][name]["cached"], name


def test_counts_add_up(runs):
    _, first, _, _ = runs
    stages = first["stages"]
    ingested = stages["ingest"]["counts"]["documents"]
    clean = stages["clean"]["counts"]
    dedup = stages["dedup"]["counts"]
    assert ingested > 0
    assert clean["input"] == ingested
    assert dedup["input"] == clean["kept"]
    assert ingested == clean["rejected"] + dedup["duplicates"] + dedup["kept"]
    assert dedup["duplicates"] > 0  # the SQuAD contexts repeat once per question
    shards = stages["shards"]["counts"]
    assert shards["train_documents"] + shards["val_documents"] == dedup["kept"]


def test_outputs_are_fingerprinted_folders_with_manifests(runs):
    workdir, first, _, _ = runs
    for name, result in first["stages"].items():
        folder = Path(result["output"])
        assert folder.parent == workdir / name
        assert read_manifest(folder)["fingerprint"] == folder.name
    pretrain = Path(first["stages"]["pretrain"]["output"])
    assert (pretrain / "final" / "model.safetensors").is_file()
    assert (pretrain / "loss_curve.png").is_file()


def test_registry_has_a_champion_that_generates(runs, capsys):
    workdir, first, _, changed = runs
    uri = first["tracking_uri"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("e2e-gpt", "champion")
    # Provenance, and why it holds its aliases, are in the version's tags.
    runs_by_flow = {first["prefect_flow_run_id"], changed["prefect_flow_run_id"]}
    assert champion.tags["prefect.flow_run_id"] in runs_by_flow
    assert champion.tags["llmpipe.data_fingerprint"] == first["stages"]["shards"]["fingerprint"]
    assert any(key.startswith("llmpipe.alias_log.") for key in champion.tags)
    versions = client.search_model_versions("name='e2e-gpt'")
    assert len(versions) == 2  # the unchanged re-run registered nothing new
    bpb = {str(v.version): float(v.tags["val_bpb"]) for v in versions}
    assert str(champion.version) == min(bpb, key=bpb.get)
    newest = str(max(int(v) for v in bpb))
    assert str(client.get_model_version_by_alias("e2e-gpt", "challenger").version) == newest

    # A fresh process, as a user runs it: nothing set up by the flow in this one.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "generate",
            "models:/e2e-gpt@champion",
            "The history of",
            "--max-new-tokens",
            "8",
            "--seed",
            "1",
            "--workdir",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("The history of")
    assert len(proc.stdout.strip()) > len("The history of")

    # Every way to name a model reaches the same weights.
    by_version = resolve_model_dir("models:/e2e-gpt/1", uri)
    logged = client.get_model_version("e2e-gpt", "1").source  # models:/m-<id>
    assert resolve_model_dir(logged, uri) == by_version
    assert (by_version / "model.safetensors").is_file() and (
        by_version / "tokenizer.json"
    ).is_file()

    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/e2e-gpt@champion")
    texts = model.predict(["He was born in"], params={"max_new_tokens": 5, "seed": 3})
    assert len(texts) == 1 and texts[0].startswith("He was born in")

    capsys.readouterr()
    assert cli_main(["models", "list", "--workdir", str(workdir)]) == 0
    listing = capsys.readouterr().out
    assert "champion" in listing and "e2e-gpt" in listing


def test_mlflow_run_tree_links_to_prefect(runs):
    _, first, _, _ = runs
    uri = first["tracking_uri"]
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(first["mlflow_run_id"])
    assert parent.data.tags["prefect.flow_run_id"] == first["prefect_flow_run_id"]
    assert parent.info.status == "FINISHED"
    assert "train.max_steps" in parent.data.params
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    by_stage = {r.data.tags["llmpipe.stage"]: r for r in children}
    assert set(by_stage) == set(STAGE_NAMES)
    assert by_stage["clean"].data.params["clean.min_words"] == "20"
    assert "train_loss" in by_stage["pretrain"].data.metrics  # from the Lightning MLflow logger
    assert by_stage["evaluate"].data.metrics["val_bpb"] > 0
    assert 0 <= by_stage["evaluate"].data.metrics["hellaswag_sample_acc_norm"] <= 1
    assert all("prefect.task_run_id" in r.data.tags for r in children)
    artifacts = {a.path for a in client.list_artifacts(by_stage["tokenizer"].info.run_id, "output")}
    assert "output/tokenizer.json" in artifacts


def test_prefect_records_the_flow_run_and_artifacts(runs):
    _, first, again, _ = runs
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
    )

    async def read():
        async with get_client() as client:
            flow_run = await client.read_flow_run(first["prefect_flow_run_id"])
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])
                )
            )
            rerun_tasks = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=[again["prefect_flow_run_id"]])
                )
            )
            return flow_run, artifacts, rerun_tasks

    flow_run, artifacts, rerun_tasks = asyncio.run(read())
    assert flow_run.state.is_completed()
    keys = {a.key for a in artifacts}
    assert {f"llmpipe-{s}" for s in STAGE_NAMES} <= keys
    assert "llmpipe-stages" in keys
    assert "llmpipe-eval-table" in keys
    assert {t.state.name for t in rerun_tasks} == {"Cached"}


def test_quarantine_holds_what_clean_rejected(runs):
    _, first, _, _ = runs
    clean = first["stages"]["clean"]
    lines = (Path(clean["output"]) / "_quarantine.jsonl").read_text().splitlines()
    assert len(lines) == clean["counts"]["rejected"]
    reasons = {json.loads(line)["reason"] for line in lines}
    assert reasons <= set(clean["counts"]["rejected_by_rule"])
