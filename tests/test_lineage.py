"""Lineage from the source files to the registered model, in MLflow and in Prefect.

One shrunk quickstart run through the real flow (a Prefect test server, a SQLite MLflow store)
and a re-run that reuses every stage. MLflow: each stage run has what it read and wrote as
datasets (digest = fingerprint, schema, counts), the registered version's LoggedModel is tied
to its training run, its eval metrics (each with its dataset) and the pipeline's run. Prefect:
each stage output is a materialized asset with its upstream assets and metadata, and the
`llmpipe-lineage` artifact draws the graph. (What the UIs show: tests/test_lineage_browser.py.)

The pipeline run is slow (~1 min); `.ci/run` runs this file.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from test_pipeline_e2e import QUICKSTART, SHRINK

from flows.assets import asset_key, lineage_markdown
from flows.pipeline import pipeline_flow
from pipeline.tracking.lineage import DataRef, StageLineage, registered_ref

SHORT = [
    *SHRINK,
    "train.max_steps=10",
    "train.val_every_steps=10",
    "train.checkpoint_every_steps=10",
    "register.model_name=lineage-gpt",
]
DATA = ("ingest", "clean", "dedup", "tokenizer", "shards")


def test_asset_keys_are_valid_prefect_keys():
    from prefect.assets import Asset

    key = asset_key("file:///work/my data/#1?x=[a]")
    assert key == "file:///work/my_data/_1_x=_a_"
    Asset(key=key)  # Prefect accepts it
    long = asset_key("s3://bucket/" + "x" * 600)
    assert len(long) <= 512 and long != asset_key("s3://bucket/" + "x" * 601)
    registered = registered_ref(
        "http://user:pw@mlflow.internal:5000",
        "m",
        {"model_name": "m", "version": 3, "metric": "val_bpb", "value": 1.5, "promoted": True},
    )
    assert registered.uri == "mlflow://mlflow.internal:5000/models/m"  # no credentials
    assert (registered.name, registered.digest) == ("m v3", "v3")  # a version of the asset
    assert (
        registered_ref("sqlite:////w/mlflow.db", "m").uri == "mlflow://sqlite/w/mlflow.db/models/m"
    )


def test_lineage_markdown_draws_every_edge():
    source = DataRef("source a", "file:///data/a.jsonl", "d0", "source", {"documents": 5})
    docs = DataRef("ingest documents", "file:///w/ingest/f1", "f1", "documents", {"documents": 5})
    model = DataRef("m v1", "mlflow://local/models/m", "v1", "registered model")
    text = lineage_markdown(
        [
            StageLineage("ingest", ((source, "source"),), (docs,)),
            StageLineage("register", ((docs, "input"),), (model,)),
        ]
    )
    assert "```mermaid" in text and "flowchart TB" in text
    assert text.count("-->|ingest|") == 1 and text.count("-->|register|") == 1
    assert '"source a<br/>5 documents<br/>d0"' in text
    assert "`mlflow://local/models/m`" in text and '{{"m v1"}}' in text


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_server):
    workdir = tmp_path_factory.mktemp("lineage-work")
    started = time.time()
    first = pipeline_flow(QUICKSTART, workdir=str(workdir), overrides=SHORT)
    again = pipeline_flow(QUICKSTART, workdir=str(workdir), overrides=SHORT)
    return first, again, started


def _stage_runs(client: MlflowClient, summary: dict) -> dict:
    parent = client.get_run(summary["mlflow_run_id"])
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    return {r.data.tags["llmpipe.stage"]: r for r in children}


def _datasets(run) -> dict[tuple[str, str], object]:
    """(name, context) -> dataset of a run's dataset inputs."""
    out = {}
    for item in run.inputs.dataset_inputs:
        context = next(t.value for t in item.tags if t.key == "mlflow.data.context")
        out[(item.dataset.name, context)] = item.dataset
    return out


@pytest.mark.slow
def test_each_stage_run_shows_what_it_read_and_wrote(runs):
    first, again, _ = runs
    client = MlflowClient(tracking_uri=first["tracking_uri"])
    stages = first["stages"]
    for summary in (first, again):  # a reused stage's run shows them too
        by_stage = _stage_runs(client, summary)
        ingest = _datasets(by_stage["ingest"])
        sources = {name for name, context in ingest if context == "source"}
        assert sources == {
            "source wikitext2",
            "source xsum_news",
            "source botchan",
            "source squad",
            "source ftfy",
        }
        written = ingest[("ingest documents", "output")]
        assert written.digest == stages["ingest"]["fingerprint"]
        assert json.loads(written.profile)["documents"] == stages["ingest"]["counts"]["documents"]
        assert json.loads(ingest[("source squad", "source")].profile)["documents"] > 0
        schema = json.loads(written.schema)["mlflow_colspec"]
        assert {c["name"] for c in schema} >= {"id", "text", "source", "url", "lang"}
        assert json.loads(written.source)["uri"] == Path(stages["ingest"]["output"]).as_uri()
        clean = _datasets(by_stage["clean"])
        assert clean[("ingest documents", "input")].digest == stages["ingest"]["fingerprint"]
        kept = json.loads(clean[("clean documents", "output")].profile)["documents"]
        assert kept == stages["clean"]["counts"]["kept"]
        dedup = _datasets(by_stage["dedup"])
        assert dedup[("dedup documents", "output")].digest == stages["dedup"]["fingerprint"]
        pretrain = _datasets(by_stage["pretrain"])
        shards = pretrain[("token shards", "training")]
        assert shards.digest == stages["shards"]["fingerprint"]
        tokens = json.loads(shards.profile)["train_tokens"]
        assert tokens == stages["shards"]["counts"]["train_tokens"]
        evaluate = _datasets(by_stage["evaluate"])
        assert ("token shards", "evaluation") in evaluate
        assert ("eval hellaswag_sample", "evaluation") in evaluate
        assert evaluate[("eval table", "output")].digest == stages["evaluate"]["fingerprint"]
        register = _datasets(by_stage["register"])
        assert ("eval table", "input") in register


@pytest.mark.slow
def test_the_registered_version_is_a_logged_model_tied_to_runs_metrics_and_datasets(runs):
    first, again, _ = runs
    uri = first["tracking_uri"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    by_stage = _stage_runs(client, first)
    version = client.get_model_version("lineage-gpt", "1")
    model_id = version.source.removeprefix("models:/")
    model = client.get_logged_model(model_id)
    training_run = first["stages"]["pretrain"]["mlflow_run_id"]
    assert model.tags["llmpipe.training_run_id"] == training_run
    assert model.tags["llmpipe.pipeline_run_id"] == first["mlflow_run_id"]
    description = model.tags["mlflow.note.content"]  # the model page's description
    # The run is linked to its page in the MLflow UI (a local store's `mlflow ui` address).
    assert f"Trained in the pretrain run [{training_run[:8]}](http" in description
    assert f"/runs/{training_run}" in description
    assert model.tags["llmpipe.shards_fingerprint"] == first["stages"]["shards"]["fingerprint"]
    assert model.params["model.n_layer"] == "2" and model.params["train.max_steps"] == "10"
    metrics = {m.key: m for m in model.metrics}
    evaluation = first["stages"]["evaluate"]["metrics"]
    assert metrics["val_bpb"].value == pytest.approx(evaluation["val_bpb"])
    assert metrics["val_bpb"].dataset_name == "token shards"
    assert metrics["val_bpb"].dataset_digest == first["stages"]["shards"]["fingerprint"]
    assert metrics["hellaswag_sample_acc"].dataset_name == "eval hellaswag_sample"
    assert metrics["val_bpb"].run_id == by_stage["evaluate"].info.run_id
    # The training run and the pipeline run list it as their output.
    for run_id in (training_run, first["mlflow_run_id"]):
        outputs = client.get_run(run_id).outputs.model_outputs
        assert model_id in {o.model_id for o in outputs}
    parent = client.get_run(first["mlflow_run_id"]).data.tags
    assert parent["llmpipe.registered_model_uri"] == "models:/lineage-gpt/1"
    assert parent["llmpipe.logged_model_id"] == model_id
    assert "Registered: [lineage-gpt version 1](http" in parent["mlflow.note.content"]
    # The re-run registered nothing, so it links nothing new.
    assert "llmpipe.registered_model_uri" not in client.get_run(again["mlflow_run_id"]).data.tags


def _asset_events(since: float, expected: int) -> list:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter
    from prefect.types._datetime import from_timestamp

    async def read():
        async with get_client() as client:
            page = await client.read_events(
                filter=EventFilter(
                    occurred=EventOccurredFilter(since=from_timestamp(since - 5)),
                    event=EventNameFilter(prefix=["prefect.asset.materialization"]),
                ),
                limit=50,
            )
            return page.events

    deadline = time.time() + 90  # the server stores events a moment after they are sent
    while True:
        events = asyncio.run(read())
        if len(events) >= expected or time.time() > deadline:
            return events
        time.sleep(2)


@pytest.mark.slow
def test_prefect_assets_run_from_the_sources_to_the_registered_model(runs):
    first, _, started = runs
    stages = first["stages"]
    events = _asset_events(started, expected=len(stages))
    by_key = {e.resource.id: e for e in events}
    output = {name: asset_key(Path(r["output"]).as_uri()) for name, r in stages.items()}
    registered = [k for k in by_key if k.startswith("mlflow://")]
    assert len(registered) == 1 and registered[0].endswith("/models/lineage-gpt")
    assert by_key[registered[0]].payload["version"] == "1"
    assert by_key[registered[0]].resource["prefect.resource.name"] == "lineage-gpt"
    for name in (*DATA, "pretrain", "evaluate"):
        assert output[name] in by_key, name
        event = by_key[output[name]]
        assert event.event == "prefect.asset.materialization.succeeded"
        assert event.payload["digest"] == stages[name]["fingerprint"]
        assert event.payload["mlflow_run_id"]  # the stage's MLflow run
        [task_run] = [r for r in event.related if r.role == "task-run"]
        assert task_run["prefect.resource.name"] == name  # materialized by the stage's own task

    def upstream(key: str) -> set[str]:
        return {r.id for r in by_key[key].related if r.role == "asset"}

    ingest_deps = upstream(output["ingest"])
    assert len(ingest_deps) == 5 and all(d.startswith("file://") for d in ingest_deps)
    assert any(d.endswith("botchan.txt") for d in ingest_deps)
    assert upstream(output["clean"]) == {output["ingest"]}
    assert upstream(output["shards"]) == {output["dedup"], output["tokenizer"]}
    assert upstream(output["pretrain"]) == {output["shards"], output["tokenizer"]}
    assert {output["pretrain"], output["shards"]} <= upstream(output["evaluate"])
    assert upstream(registered[0]) == {output["evaluate"], output["pretrain"]}
    ingest = by_key[output["ingest"]]
    assert ingest.payload["documents"] == stages["ingest"]["counts"]["documents"]
    assert ingest.resource["prefect.resource.name"].startswith("ingest documents")
    assert by_key[output["shards"]].payload["train_tokens"] > 0
    # The re-run reused every stage: no new materializations.
    assert len([e for e in events if e.resource.id == output["ingest"]]) == 1


@pytest.mark.slow
def test_the_flow_run_has_a_lineage_graph_artifact(runs):
    first, _, _ = runs
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["llmpipe-lineage"]))
            )

    artifacts = [
        a for a in asyncio.run(read()) if str(a.flow_run_id) == first["prefect_flow_run_id"]
    ]
    [artifact] = artifacts
    text = artifact.data
    assert "```mermaid" in text
    for name in ("source botchan", "ingest documents", "token shards", "lineage-gpt v1"):
        assert name in text
    for stage in (*DATA, "pretrain", "evaluate", "register"):
        assert f"-->|{stage}|" in text
