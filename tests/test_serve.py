"""The registered model works with MLflow's standard tools: `mlflow.pyfunc.load_model` and
`mlflow models serve` answering a REST request with generated text."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from tiny_models import mlflow_store, save_tiny_model, train_tokenizer

from pipeline.tracking.registry import PromotionRule, register_model_dir
from pipeline.tracking.runs import Tracker

NAME = "served-gpt"


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("serve")
    uri = mlflow_store(root)
    model_dir = save_tiny_model(root / "model", train_tokenizer(300), block_size=64)
    tracker = Tracker(uri, "serve-test", artifact_root=root / "artifacts")
    run = tracker.start_run("register")
    register_model_dir(uri, run, model_dir, NAME, {"val_bpb": 3.0}, PromotionRule())
    tracker.end_run(run)
    return uri


def test_pyfunc_predicts_from_a_list_a_dataframe_and_an_array(registered):
    mlflow.set_tracking_uri(registered)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    params = {"max_new_tokens": 4, "seed": 1}
    from_list = model.predict(["Once upon a time"], params=params)
    from_frame = model.predict(pd.DataFrame({"prompt": ["Once upon a time"]}), params=params)
    from_array = model.predict(np.array(["Once upon a time"]), params=params)
    assert from_list[0].startswith("Once upon a time") and len(from_list[0]) > 16
    assert list(from_frame) == list(from_array) == list(from_list)  # same seed, same text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_generated_text(registered, tmp_path):
    port = _free_port()
    bin_dir = str(Path(sys.executable).parent)  # the server starts uvicorn through the shell
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registered,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }
    command = [
        str(Path(bin_dir) / "mlflow"),
        "models",
        "serve",
        "-m",
        f"models:/{NAME}@champion",
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.time() + 180
        while _get(f"http://127.0.0.1:{port}/ping") != 200:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.time() < deadline, "server did not answer /ping in 180 s"
            time.sleep(1)
        body = {"inputs": ["Once upon a time"], "params": {"max_new_tokens": 5, "seed": 2}}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        [text] = answer["predictions"]
        assert text.startswith("Once upon a time") and len(text) > len("Once upon a time")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
