"""The UIs as a person sees them: headless Chromium on the Prefect and MLflow servers.

After the server-mode run (conftest `served_run`: the quickstart deployment run by a worker on
a Prefect and an MLflow server), the browser opens the Prefect flow run (its name, the stages,
the artifacts with their tables and MLflow links, the training progress), the MLflow run (its
metrics and plots) and the registered model (its versions, aliases and eval metrics), and
saves a screenshot of each page under the test's output folder (and in $LLMPIPE_SCREENSHOTS
when set).

Slow; skipped where Chromium, its driver or selenium is missing (Debian: apt-get install
chromium chromium-driver). `.ci/run` runs it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest
from server_helpers import MODEL_NAME, REPO, mlflow_parent_run

from pipeline.config import load_config
from pipeline.dag import stage_names

pytestmark = pytest.mark.slow
STAGE_NAMES = stage_names(load_config(REPO / "configs" / "quickstart.yaml"))  # no finetune


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (name if Path(name).is_file() else None)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    from conftest import missing

    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium is not installed (pip install -e '.[dev]')")
    chromium = _find("chromium", "chromium-browser", "/usr/lib/chromium/chromium")
    driver_path = _find("chromedriver", "/usr/lib/chromium/chromedriver")
    if not chromium or not driver_path:
        missing("no Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium  # given explicitly: selenium then downloads nothing
    for argument in (
        "--headless=new",
        "--no-sandbox",  # as root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1600,1100",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


class Page:
    """Open a URL and wait until the page shows the texts a person would look for."""

    def __init__(self, driver, shots: Path):
        self.driver = driver
        self.shots = shots
        shots.mkdir(parents=True, exist_ok=True)

    def open(self, url: str, expect: list[str], shot: str, timeout: float = 90) -> str:
        self.driver.get(url)
        return self.wait(expect, shot, timeout, url)

    def click(self, css: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.CSS_SELECTOR, css).click()

    def click_text(self, text: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.XPATH, f"//*[normalize-space(text())='{text}']").click()

    def mlflow_model_training_view(self, ui: str) -> None:
        """What a person picks in MLflow's header: the model-training view (runs, models),
        not the GenAI one; and the assistant panel closed."""
        self.driver.get(ui)
        self.driver.execute_script(
            "localStorage.setItem('mlflow.workflowType_v1', '\"machine_learning\"');"
            "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
            "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
        )
        self.driver.refresh()  # the app reads them when it starts (hash links do not restart it)

    def wait(self, expect: list[str], shot: str, timeout: float = 90, url: str = "") -> str:
        from selenium.webdriver.common.by import By

        url = url or self.driver.current_url
        deadline = time.time() + timeout
        text = ""
        while time.time() < deadline:
            text = self.driver.find_element(By.TAG_NAME, "body").text
            if all(e in text for e in expect):
                break
            time.sleep(1)
        time.sleep(1)  # let charts and images finish drawing before the screenshot
        path = self.shots / f"{shot}.png"
        self.driver.save_screenshot(str(path))
        extra = os.environ.get("LLMPIPE_SCREENSHOTS")
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / path.name)
        missing = [e for e in expect if e not in text]
        assert not missing, f"{url}: not shown: {missing} (screenshot {path})"
        return text


@pytest.fixture
def page(browser, tmp_path):
    return Page(browser, tmp_path / "screenshots")


def _artifact_ids(served) -> dict[str, str]:
    """The flow run's Prefect artifacts by key (their pages are /artifacts/artifact/<id>)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[served.flow_run_id])
                )
            )

    with temporary_settings({PREFECT_API_URL: served.stack.client_env()["PREFECT_API_URL"]}):
        artifacts = asyncio.run(read())
    return {a.key: str(a.id) for a in artifacts if a.key}


def test_prefect_flow_run_shows_stages_and_artifacts(served_run, page):
    ui = served_run.stack.ui_urls()["prefect"]
    run = f"{ui}/runs/flow-run/{served_run.flow_run_id}"
    page.open(run, [served_run.flow_run_name, "Completed", *STAGE_NAMES], "prefect-flow-run")
    page.click("li.p-tab#artifacts")
    # The flow run's own artifacts; the progress bar belongs to the pretrain task run.
    page.wait(
        ["llmpipe-stages", "llmpipe-mlflow", "llmpipe-clean", "llmpipe-register"],
        "prefect-artifacts",
    )
    ids = _artifact_ids(served_run)
    overview = page.open(
        f"{ui}/artifacts/artifact/{ids['llmpipe-mlflow']}",
        ["where this run is tracked", "pipeline run", *STAGE_NAMES, f"{MODEL_NAME} v1"],
        "prefect-artifact-overview",
    )
    assert "***" not in overview  # links carry no credentials, not even masked ones
    page.open(
        f"{ui}/artifacts/artifact/{ids['llmpipe-pretrain-progress']}",
        ["pretrain", "100"],
        "prefect-artifact-progress",
    )
    page.open(
        f"{ui}/artifacts/artifact/{ids['llmpipe-clean']}",
        ["clean", "kept", "MLflow"],
        "prefect-artifact-clean",
    )


def test_the_printed_mlflow_link_opens_the_model_training_view(served_run, page):
    """A new user's browser (nothing in localStorage) on the address the run prints: MLflow 3
    would open its GenAI view ("Evaluations", traces); the link asks for model training."""
    from flows.ui import mlflow_run_url

    _, parent = mlflow_parent_run(served_run)
    ui = served_run.stack.ui_urls()["mlflow"]
    page.driver.get(ui)
    page.driver.execute_script("localStorage.clear();")
    uri = served_run.stack.client_env()["MLFLOW_TRACKING_URI"]
    url = mlflow_run_url(uri, parent.info.experiment_id, parent.info.run_id)
    assert url.startswith(ui) and url.endswith("?workflowType=machine_learning")
    page.driver.get("about:blank")
    text = page.open(url, [served_run.flow_run_name, "val_bpb", "Runs"], "mlflow-printed-link")
    assert "Evaluations" not in text and "Evaluation runs" not in text


def test_mlflow_run_shows_metrics_and_plots(served_run, page):
    _, parent = mlflow_parent_run(served_run)
    ui = served_run.stack.ui_urls()["mlflow"]
    page.mlflow_model_training_view(ui)
    experiment = parent.info.experiment_id
    page.open(f"{ui}/#/experiments/{experiment}/runs", [served_run.flow_run_name], "mlflow-runs")
    run = f"{ui}/#/experiments/{experiment}/runs/{parent.info.run_id}"
    page.open(
        run,
        [served_run.flow_run_name, "val_bpb", "Prefect flow run", *STAGE_NAMES],
        "mlflow-run",
    )
    page.open(
        f"{run}/artifacts/plots/loss_curve.png",
        ["plots", "loss_curve.png", "eval_summary.png"],
        "mlflow-loss-curve",
    )
    page.click_text("eval_summary.png")  # the artifact tree, as a person clicks it
    page.wait(["plots/eval_summary.png"], "mlflow-eval-summary")


def test_mlflow_registered_model_shows_aliases_and_metrics(served_run, page):
    ui = served_run.stack.ui_urls()["mlflow"]
    page.mlflow_model_training_view(ui)
    page.open(
        f"{ui}/#/models/{MODEL_NAME}",
        [MODEL_NAME, "Version 1", "champion", "challenger", "val_bpb"],
        "mlflow-registered-model",
    )
    page.open(
        f"{ui}/#/models/{MODEL_NAME}/versions/1",
        ["Version 1", "champion", "val_bpb", "promoted to @champion"],
        "mlflow-model-version",
    )
