"""What the UIs show beyond raw records (flows/ui.py, pipeline/tracking/plots.py).

The trainer's `step N/M` lines move a Prefect progress artifact (on the session's Prefect test
server); the eval-summary plot draws one panel per quality metric beside the champion's value;
links between the UIs never carry credentials; the run overview lists every stage. The browser
checks of the real UIs are in tests/test_ui_browser.py.
"""

from __future__ import annotations

import asyncio
import re

import matplotlib.image
import pytest

from flows.ui import (
    STEP_LINE,
    StageProgress,
    TrainingProgress,
    format_duration,
    mlflow_model_url,
    mlflow_run_url,
    promotion_text,
    run_mode,
    run_summary_markdown,
    script_command,
)
from pipeline.tracking.plots import eval_summary_plot
from pipeline.train.ticks import parse_tick, tick_line


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


def test_links_carry_no_credentials_and_open_the_model_training_view():
    uri = "http://alice:s3cret@mlflow.example:5000/"
    view = "?workflowType=machine_learning"  # else MLflow 3 opens its GenAI view
    assert (
        mlflow_run_url(uri, "1", "abc")
        == f"http://mlflow.example:5000/#/experiments/1/runs/abc{view}"
    )
    assert (
        mlflow_model_url(uri, "gpt", 3)
        == f"http://mlflow.example:5000/#/models/gpt/versions/3{view}"
    )
    # A local store: where `mlflow ui --backend-store-uri ...` serves it by default.
    assert (
        mlflow_run_url("sqlite:////tmp/mlflow.db", "1", "abc")
        == f"http://127.0.0.1:5000/#/experiments/1/runs/abc{view}"
    )


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
    assert "| ingest | cached | 1.5 | [aaaaaaaa](http://h:5000/#/experiments/1/runs/" in text
    assert "| register | ran |" in text
    assert "[gpt v2](http://h:5000/#/models/gpt/versions/2?workflowType" in text
    assert "@champion" in text


def test_run_overview_links_a_local_store_and_each_card_in_pipeline_order():
    results = {
        name: {"cached": False, "seconds": 1.0, "stage_run_id": name[0] * 32}
        for name in ("ingest", "clean", "register")
    }
    results["clean"]["prefect_artifact_id"] = "1234"
    results["register"]["registered"] = {
        "model_name": "gpt",
        "version": "3",
        "metric": "val_bpb",
        "value": 2.5,
        "promoted": False,
        "reason": "val_bpb 2.5 does not beat champion v2 (2.4): the rule needs val_bpb < 2.4",
    }
    text = run_summary_markdown("q", "llmpipe", "1", "sqlite:////w/mlflow.db", "c" * 32, results)
    assert "[pipeline run cccccccc](http://127.0.0.1:5000/#/experiments/1/runs/" in text
    assert "mlflow ui --backend-store-uri sqlite:////w/mlflow.db" in text
    assert "[llmpipe-clean](http://127.0.0.1:4200/artifacts/artifact/1234)" in text
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["ingest", "clean", "register"]
    assert "not promoted" in text and "does not beat champion v2 (2.4)" in text


def test_promotion_text_gives_the_rule_and_both_values():
    assert promotion_text({"promoted": True}) == "promoted to @champion"
    reason = "val_bpb 2.5 does not beat champion v2 (2.4): the rule needs val_bpb < 2.4"
    assert promotion_text({"promoted": False, "reason": reason}).endswith(reason)


def test_format_duration():
    assert format_duration(4.4) == "4 s"
    assert format_duration(125) == "2 min 05 s"
    assert format_duration(3725) == "1 h 02 min"


class _NoArtifacts(StageProgress):
    def _show(self, percent, description):  # no Prefect server in these tests
        self.shown = (percent, description)


def test_stage_progress_draws_a_bar_with_the_time_left_and_logs_no_ticks():
    import io
    import time as clock

    logged: list[str] = []
    screen = io.StringIO()
    progress = _NoArtifacts("pretrain", logged.append, bar=True, bar_file=screen)
    progress("launching: python -m pipeline.train request.json")
    progress("@progress 0/100")
    clock.sleep(0.2)
    progress("@progress 40/100")
    progress("step 50/100 | train_loss 4.2 | lr 1.00e-03")
    progress("@progress 100/100")
    progress.finish()
    assert logged[0].startswith("launching")
    assert not any(line.startswith("@progress") for line in logged)  # ticks only move the bar
    (step_line,) = [line for line in logged if line.startswith("step 50/100")]
    assert re.search(r"\| ETA \d+ s$", step_line), step_line
    drawn = screen.getvalue()
    assert "pretrain:" in drawn and "100/100 steps" in drawn and "left]" in drawn


def test_stage_progress_without_a_terminal_still_gives_the_eta():
    logged: list[str] = []
    progress = _NoArtifacts("evaluate", logged.append, bar=False)
    progress._first = (0, 0.0)  # started at t=0: 2 of 4 tasks after 10 s -> 10 s left
    assert progress.eta_seconds(2, 4, now=10.0) == pytest.approx(10.0)
    progress("@progress 1/4 tasks")
    assert logged == [] and progress.bar is None
    assert "task 1 of 4" in progress.shown[1]


def test_progress_ticks_parse():
    assert parse_tick("@progress 3/300") == (3, 300, "steps")
    assert parse_tick("@progress 2/5 tasks") == (2, 5, "tasks")
    assert parse_tick(tick_line(7, 9, "tasks")) == (7, 9, "tasks")
    assert parse_tick("step 3/300 | loss 1") is None


def test_trainer_ticks_at_most_once_a_second_and_at_the_end():
    import io
    from types import SimpleNamespace

    from pipeline.train.progress import ProgressTicks

    out = io.StringIO()
    ticks = ProgressTicks(total=5, every_seconds=3600, out=out)
    trainer = SimpleNamespace(global_step=0, is_global_zero=True)
    ticks.on_train_start(trainer, None)
    for step in range(1, 6):
        trainer.global_step = step
        ticks.on_train_batch_end(trainer, None, None, None, step)
    assert out.getvalue().splitlines() == ["@progress 0/5", "@progress 5/5"]


def test_summary_commands_name_the_venv_when_it_is_not_on_path(monkeypatch, tmp_path):
    import sys
    from pathlib import Path

    monkeypatch.setenv("PATH", str(tmp_path))  # nothing of the venv on PATH
    scripts = Path(sys.executable).parent
    if (scripts / "llmpipe").is_file():
        assert script_command("llmpipe") == str(scripts / "llmpipe")
    monkeypatch.setenv("PATH", str(scripts))
    if (scripts / "llmpipe").is_file():
        assert script_command("llmpipe") == "llmpipe"
    assert script_command("no-such-command-here") == "no-such-command-here"


def test_a_prefect_server_that_answers_is_found_and_used(monkeypatch, tmp_path):
    import http.server
    import os
    import threading

    from flows.stack import prefect_server_answers, use_running_prefect_server

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/api/health" else 404)
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = f"http://127.0.0.1:{server.server_port}/api"
        assert prefect_server_answers(api)
        assert not prefect_server_answers(f"http://127.0.0.1:{server.server_port}/other")
        monkeypatch.setenv("PREFECT_API_URL", "")  # restored after the test, whatever is set
        monkeypatch.delenv("PREFECT_API_URL")
        monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
        said: list[str] = []
        monkeypatch.setenv("LLMPIPE_REUSE_PREFECT_SERVER", "0")
        assert use_running_prefect_server(api, log=said.append) is None  # turned off
        monkeypatch.setenv("LLMPIPE_REUSE_PREFECT_SERVER", "1")
        # a profile that names a server: that one is used, not the one answering
        (tmp_path / "profiles.toml").write_text(
            'active = "mine"\n[profiles.mine]\nPREFECT_API_URL = "http://elsewhere:4200/api"\n'
        )
        assert use_running_prefect_server(api, log=said.append) is None
        (tmp_path / "profiles.toml").unlink()
        assert use_running_prefect_server(api, log=said.append) == api
        assert os.environ["PREFECT_API_URL"] == api
        assert said == [
            f"Using the Prefect server that answers at {api[:-4]} "
            + ("(instead of starting a temporary one).")
        ]
    finally:
        server.shutdown()
    assert not prefect_server_answers(api, timeout=0.5)  # nothing answers there now
