"""Lineage as a person sees it, in headless Chromium, after the server-mode run (conftest
`served_run`: the quickstart deployment run by a worker against the Prefect and MLflow servers).

- MLflow: a stage run's Datasets panel (what dedup read and wrote: names, digests, counts,
  schema), and the registered version's LoggedModel page (metrics with their datasets and the
  run that measured them, the model version, the description naming the training run).
- Prefect: the `llmpipe-lineage` artifact's graph from the source files to the registered
  model (Prefect's UI 2 draws its mermaid), and the registered model's asset materialization
  event with its upstream assets. (The open-source Prefect server has no asset
  graph page; Prefect Cloud draws one from these same events.)

Screenshots go to the test's folder and, when set, `$LLMPIPE_SCREENSHOTS`. Slow; `.ci/run`
runs it beside tests/test_ui_browser.py (they share the served run).
"""

from __future__ import annotations

import asyncio

import pytest
import test_ui_browser
from server_helpers import MODEL_NAME, mlflow_parent_run
from test_ui_browser import _artifact_ids

pytestmark = pytest.mark.slow
browser = test_ui_browser.browser  # its headless Chromium and screenshot helper, as fixtures
page = test_ui_browser.page


def _stage_run_id(client, parent, stage: str) -> str:
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    return next(r.info.run_id for r in children if r.data.tags["llmpipe.stage"] == stage)


def test_mlflow_datasets_panel_shows_what_a_stage_read_and_wrote(served_run, page):
    client, parent = mlflow_parent_run(served_run)
    ui = served_run.stack.ui_urls()["mlflow"]
    page.mlflow_model_training_view(ui)
    dedup = _stage_run_id(client, parent, "dedup")
    run = f"{ui}/#/experiments/{parent.info.experiment_id}/runs/{dedup}"
    page.open(run, ["dedup", "Datasets", "clean documents", "Input"], "mlflow-dedup-run")
    page.driver.find_element(
        "xpath", "//*[contains(text(), 'clean documents')]"
    ).click()  # the dataset, as a person clicks it: the Datasets panel opens
    text = page.wait(
        ["2 datasets used", "clean documents", "dedup documents", "kind:", "documents:", "lang"],
        "mlflow-datasets-panel",
    )
    fingerprint = client.get_run(dedup).data.tags["llmpipe.fingerprint"]
    assert fingerprint in text.replace("#", "")  # the output's digest is the stage fingerprint


def test_mlflow_logged_model_page_ties_metrics_datasets_and_runs(served_run, page):
    client, parent = mlflow_parent_run(served_run)
    version = client.get_model_version(MODEL_NAME, "1")
    model_id = version.source.removeprefix("models:/")
    ui = served_run.stack.ui_urls()["mlflow"]
    page.mlflow_model_training_view(ui)
    page.open(
        f"{ui}/#/experiments/{parent.info.experiment_id}/models/{model_id}",
        [
            "val_bpb",
            "token shards",
            "evaluate",  # the run that measured the metrics
            "Datasets used",
            MODEL_NAME,  # the model version it is registered as
            "Trained in the pretrain run",
        ],
        "mlflow-logged-model",
    )
    page.open(
        f"{ui}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}",
        ["Registered:", MODEL_NAME, "Registered models"],
        "mlflow-pipeline-run-registered",
    )


def _registered_event(served) -> tuple[str, str]:
    """(date, id) of the registered model's asset materialization event."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read():
        async with get_client() as client:
            page = await client.read_events(
                filter=EventFilter(event=EventNameFilter(prefix=["prefect.asset.materialization"])),
                limit=50,
            )
            return page.events

    with temporary_settings({PREFECT_API_URL: served.stack.client_env()["PREFECT_API_URL"]}):
        events = asyncio.run(read())
    [event] = [
        e
        for e in events
        if e.resource.id.endswith(f"/models/{MODEL_NAME}") and e.payload.get("version") == "1"
    ]
    return event.occurred.strftime("%Y-%m-%d"), str(event.id)


def test_prefect_draws_the_lineage_from_sources_to_the_registered_model(served_run, page):
    ui = served_run.stack.ui_urls()["prefect"]
    ids = _artifact_ids(served_run)
    page.driver.set_window_size(1600, 2700)  # the whole graph, top to bottom
    try:
        text = page.open(
            f"{ui}/v2/artifacts/artifact/{ids['llmpipe-lineage']}",
            ["Lineage of this run", "source botchan", "ingest documents", "token shards"]
            + ["pretrain checkpoint", "eval table", f"{MODEL_NAME} v1"],
            "prefect-lineage-graph",
        )
        drawn = page.driver.find_elements("css selector", "svg[aria-roledescription^=flowchart]")
        assert drawn, "the graph was not drawn"
        assert "flowchart TB" not in text  # drawn, not shown as code
    finally:
        page.driver.set_window_size(1600, 1100)
    date, event = _registered_event(served_run)
    page.open(
        f"{ui}/v2/events/event/{date}/{event}",
        ["prefect.asset.materialization.succeeded", MODEL_NAME, "Related Resources"]
        + ["/pretrain/", "/evaluate/", "Task run"],  # its upstream assets; the register task
        "prefect-asset-event",
    )
    page.click_text("Raw")
    page.wait(
        ['"prefect.resource.role": "asset"', "asset-materialized-by", f"/models/{MODEL_NAME}"],
        "prefect-asset-raw",
    )
