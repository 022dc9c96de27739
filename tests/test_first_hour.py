"""The first hour of a new user: `llmpipe run` as a person types it, and what they do next.

One real run of the quickstart config (shrunk to test size, its model name kept) by the
installed `llmpipe` script, in a fresh folder, with the venv's `bin/` NOT on PATH (the README's
commands never activate it). Then:
- its log holds no warnings, tracebacks, raw colour codes, third-party tips or download bars;
- each command the summary prints under "Look around" runs as printed, in a shell;
- the README's Python snippet runs as written, from the folder holding `work/`, and leaves no
  stray `./mlflow.db` behind;
- the MLflow experiment is a model-training one, and every MLflow address asks for that view.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_pipeline_e2e import QUICKSTART, SHRINK

pytestmark = pytest.mark.slow  # a real `llmpipe run` (its own Prefect server): about a minute
REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(sys.executable).parent
# What a new user should not see: only the pipeline speaks.
NOISE = re.compile(
    r"warning|traceback|\x1b\[|Tip:|litlogger|it/s\]|Downloading artifacts|"
    r"Failed to send telemetry|Successfully registered model|Creating initial MLflow",
    re.IGNORECASE,
)


def _user_env() -> dict[str, str]:
    """The environment of someone who did not activate the venv."""
    env = dict(os.environ)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if Path(p) != SCRIPTS]
    env["PATH"] = os.pathsep.join(path or ["/usr/bin", "/bin"])
    env.pop("VIRTUAL_ENV", None)
    # Nor what an earlier in-process run of this pytest left (mlflow.set_tracking_uri and
    # set_registry_uri set these).
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_REGISTRY_URI", None)
    return env


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """`llmpipe run configs/quickstart.yaml` (shrunk), from a fresh folder, as a user runs it."""
    if not (SCRIPTS / "llmpipe").is_file():
        pytest.skip("the llmpipe script is not installed beside this interpreter")
    home = tmp_path_factory.mktemp("user")
    overrides = [o for o in SHRINK if not o.startswith("register.model_name")]
    command = [str(SCRIPTS / "llmpipe"), "run", QUICKSTART, "--workdir", str(home / "work")]
    for override in overrides:
        command += ["--set", override]
    proc = subprocess.run(
        command, cwd=home, env=_user_env(), capture_output=True, text=True, timeout=900
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return home, log, proc.stdout


def test_the_log_says_only_what_the_pipeline_says(quickstart):
    _, log, _ = quickstart
    noisy = [line for line in log.splitlines() if NOISE.search(line)]
    assert not noisy, "\n".join(noisy[:20])
    assert "Pipeline finished in" in log
    assert re.search(r"step \d+/\d+ \| .* \| (ETA \d|done)", log), "no ETA on the step lines"


def _look_around(stdout: str) -> list[str]:
    """The commands printed under "Look around" (not the `then <address>` lines)."""
    section = stdout.split("Look around", 1)[1].splitlines()[1:]
    return [
        line.strip()
        for line in section
        if line.startswith("  ") and not line.strip().startswith(("then ", "MLflow:", "Prefect:"))
    ]


def test_printed_commands_run_as_printed(quickstart):
    home, _, stdout = quickstart
    commands = _look_around(stdout)
    assert len(commands) == 3, commands
    generate, mlflow_ui, prefect_server = commands
    assert " generate " in generate and str(SCRIPTS) in generate  # the venv is not on PATH
    shell = dict(cwd=Path("/"), env=_user_env(), capture_output=True, text=True, timeout=300)
    proc = subprocess.run(["bash", "-c", generate], **shell)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("The history of") and len(proc.stdout.strip()) > 20
    # The servers: the same command, asked for its help instead of serving for ever.
    for command in (mlflow_ui, prefect_server):
        proc = subprocess.run(["bash", "-c", command + " --help"], **shell)
        assert proc.returncode == 0, f"{command}: {proc.stderr[-1000:]}"
    assert "sqlite:///" in mlflow_ui and "PREFECT_SERVER_ANALYTICS_ENABLED=false" in prefect_server
    urls = re.findall(r"then (http://\S+)", stdout)
    assert urls and urls[0].endswith("?workflowType=machine_learning")


def readme_python_snippet() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    marker = "<!-- tested: tests/test_first_hour.py runs this block as written -->"
    block = text.split(marker, 1)[1].split("```python", 1)[1].split("```", 1)[0]
    lines = block.splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[indent:] for line in lines).strip() + "\n"


def test_readme_python_snippet_runs_as_written(quickstart):
    home, _, _ = quickstart
    snippet = readme_python_snippet()
    assert "models:/llmpipe-quickstart@champion" in snippet
    proc = subprocess.run(
        [sys.executable, "-c", snippet],
        cwd=home,
        env=_user_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "The history of" in proc.stdout
    assert not (home / "mlflow.db").exists()  # it used ./work/mlflow.db, made no empty store


def test_mlflow_experiment_is_a_model_training_one(quickstart):
    from mlflow import MlflowClient

    home, _, _ = quickstart
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'work' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("llmpipe")
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    parent = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if "mlflow.parentRunId" not in r.data.tags
    ]
    assert len(parent) == 1
    metrics = parent[0].data.metrics
    assert "pipeline_seconds" in metrics and "seconds" not in metrics
    assert "stage_seconds" not in metrics  # each stage's time is on its own run


def test_the_mlflow_ui_command_is_in_the_readme():
    """The README shows the same commands the summary prints (with .venv/bin/)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert ".venv/bin/mlflow ui --backend-store-uri" in text
    assert "PREFECT_SERVER_ANALYTICS_ENABLED=false .venv/bin/prefect server start" in text
    assert shutil.which("bash")
