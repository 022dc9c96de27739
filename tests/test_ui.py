"""What the UIs show beyond raw records (flows/ui.py, pipeline/tracking/plots.py).

The trainer's `step N/M` lines move a Prefect progress artifact (on the session's Prefect test
server); the eval-summary plot draws one panel per quality metric beside the champion's value;
links between the UIs never carry credentials; the run overview lists every stage. The browser
checks of the real UIs are in tests/test_ui_browser.py.
"""

from __future__ import annotations

import asyncio

import matplotlib.image
import pytest

from flows.ui import (
    STEP_LINE,
    TrainingProgress,
    mlflow_model_url,
    mlflow_run_url,
    run_mode,
    run_summary_markdown,
)
from pipeline.tracking.plots import eval_summary_plot


def test_progress_artifact_follows_the_training_steps(prefect_server):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )
    from prefect.runtime import flow_run

    seen: list[str] = []

    @flow
    def training_like():
        progress = TrainingProgress("pretrain", seen.append)
        progress("launching: python -m pipeline.train request.json")
        progress("step 10/40 | train_loss 6.1234 | lr 1.00e-03 | 2,048 tok/s")
        progress("step 5/40 | train_loss 9.9")  # out of order: the bar never goes back
        progress("step 30/40 | val_loss 5.9000")
        midway = progress.percent
        progress.finish()
        return midway, flow_run.id

    midway, run_id = training_like()

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["llmpipe-pretrain-progress"]),
                    flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
                )
            )

    (artifact,) = asyncio.run(read())
    assert midway == pytest.approx(75.0)
    assert artifact.type == "progress"
    assert float(artifact.data) == pytest.approx(100.0)
    assert artifact.description == "pretrain: done"
    assert len(seen) == 4  # every line still reaches the log


def test_step_lines_are_recognised():
    match = STEP_LINE.match("step 120/300 | train_loss 4.5")
    assert match and match.groups()[:2] == ("120", "300")
    assert STEP_LINE.match("stepping 1/2") is None
    assert STEP_LINE.match("epoch 1/2") is None


def test_run_mode_names_what_part_ran():
    assert run_mode(None) == "full"
    assert run_mode(None, only=["ingest", "clean"]) == "full, only ingest,clean"
    assert run_mode(None, start="pretrain") == "full, from pretrain"


def test_eval_summary_plot_has_a_panel_per_quality_metric(tmp_path):
    metrics = {"val_loss": 6.2, "val_ppl": 490.0, "val_bpb": 3.64, "num_params": 169728.0}
    path = eval_summary_plot(
        metrics, tmp_path / "eval.png", baseline={"val_bpb": 3.70, "val_loss": 6.3}
    )
    image = matplotlib.image.imread(path)
    # Three quality metrics (num_params is bookkeeping): three panels side by side, one row.
    assert image.shape[1] == 900 and image.shape[0] == 320
    wide = eval_summary_plot({f"m{i}": float(i) for i in range(6)}, tmp_path / "six.png")
    assert matplotlib.image.imread(wide).shape[:2] == (580, 1200)  # 4 columns, 2 rows
    assert eval_summary_plot({"num_params": 1.0}, tmp_path / "none.png") is None


def test_links_carry_no_credentials():
    uri = "http://alice:s3cret@mlflow.example:5000/"
    assert mlflow_run_url(uri, "1", "abc") == "http://mlflow.example:5000/#/experiments/1/runs/abc"
    assert mlflow_model_url(uri, "gpt", 3) == "http://mlflow.example:5000/#/models/gpt/versions/3"
    assert mlflow_run_url("sqlite:////tmp/mlflow.db", "1", "abc") is None


def test_run_overview_lists_every_stage_with_its_mlflow_run():
    results = {
        "ingest": {"cached": True, "seconds": 1.5, "fingerprint": "f1", "stage_run_id": "a" * 32},
        "register": {
            "cached": False,
            "seconds": 2.0,
            "fingerprint": "f2",
            "stage_run_id": "b" * 32,
            "registered": {
                "model_name": "gpt",
                "version": "2",
                "metric": "val_bpb",
                "value": 3.5,
                "promoted": True,
            },
        },
    }
    text = run_summary_markdown("quickstart", "llmpipe", "1", "http://h:5000", "c" * 32, results)
    assert "| ingest | cached | 1.5 | `f1` | [aaaaaaaa](http://h:5000/#/experiments/1/runs/" in text
    assert "| register | ran |" in text
    assert "[gpt v2](http://h:5000/#/models/gpt/versions/2)" in text and "@champion" in text
