"""Before and around a run: bad configs stop everything at once, secrets stay out of files,
and `train.launcher` runs only what the machine allows.

The bad configs run through `llmpipe run` in one fresh process, which then reports whether it
started anything: a Prefect server (its module imported, a child process) or an MLflow store.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import ConfigError, ModelConfig, TrainConfig, load_config
from pipeline.ingest.files import require_source_files
from pipeline.train.request import PretrainData, TrainRequest

REPO = Path(__file__).resolve().parents[1]
BOTCHAN = REPO / "data" / "sample" / "botchan.txt"

# Runs each case through the real command line in this one process, then says what it started.
_DRIVER = """
import contextlib, io, json, os, sys
from flows.cli import main

results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        except BaseException as exc:  # a traceback: what must not happen
            import traceback
            code = "raised " + "".join(traceback.format_exception(exc))
    results.append({"code": code, "stderr": err.getvalue()})
children = [
    pid for pid in os.listdir("/proc") if pid.isdigit()
    and open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1] == str(os.getpid())
]
print(json.dumps({
    "results": results,
    "prefect_server_imported": "prefect.server.api.server" in sys.modules,
    "mlflow_imported": "mlflow" in sys.modules,
    "children": children,
}))
"""


def _run_cli_cases(cases: list[list[str]], home: Path) -> dict:
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect")}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(cases)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_bad_configs_exit_2_naming_the_key_before_anything_starts(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(
        f"name: lifecycle\nsources:\n  - {{type: text, name: botchan, path: {BOTCHAN}}}\n"
    )
    two = tmp_path / "two.yaml"
    two.write_text(
        f"sources:\n  - {{type: text, path: {BOTCHAN}}}\n"
        f"  - {{type: jsonl, name: news, path: {tmp_path}/nowhere/*.jsonl}}\n"
    )
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    typo = tmp_path / "typo.yaml"
    typo.write_text(f"sources: [{{type: text, path: {BOTCHAN}}}]\nclean: {{min_wrods: 5}}\n")
    work = tmp_path / "work"
    run = ["run", "--workdir", str(work)]
    cases = {
        "only": ([*run, str(good), "--only", "ingset"], ["--only ingset", "did you mean 'ingest'"]),
        "from": ([*run, str(good), "--from", "traning"], ["--from traning", "ingest, clean"]),
        "binary": ([*run, str(binary)], ["binary.yaml", "not a YAML config"]),
        "index": ([*run, str(good), "--set", "sources.5.path=x"], ["sources.5.path", "no entry 5"]),
        "missing data": (
            [*run, str(good), "--set", "sources.0.path=/nowhere/x.txt"]
            + ["--set", "train.max_steps=100000000"],
            ["sources.0.path", "/nowhere/x.txt", "optional: true"],
        ),
        "one of two missing": ([*run, str(two)], ["sources.1.path", "'news'", "glob"]),
        "typo": ([*run, str(typo)], ["clean.min_wrods: unknown key; did you mean `min_words`?"]),
        "name": ([*run, str(good), "--set", "name=../../escape"], ["name:", "plain name"]),
        "launcher": (
            [*run, str(good), "--set", "train.launcher=sh -c 'touch /tmp/owned'"],
            ["train.launcher", "not an allowed launcher", "LLMPIPE_ALLOW_LAUNCHER"],
        ),
        "secret in --set": (
            [*run, str(good), "--set", "sources.0.path=s3://key:secret@bucket/x.txt"],
            ["sources.0.path", "credentials"],
        ),
    }
    report = _run_cli_cases([argv for argv, _ in cases.values()], tmp_path)
    for (case, (_, expected)), result in zip(cases.items(), report["results"], strict=True):
        assert result["code"] == 2, (case, result)
        assert "Traceback" not in result["stderr"], (case, result["stderr"])
        for text in expected:
            assert text in result["stderr"], (case, text, result["stderr"])
        if case == "typo":  # the suggestion, not the list of 34 keys
            assert "expected one of" not in result["stderr"]
    assert not report["prefect_server_imported"] and report["children"] == []
    assert not report["mlflow_imported"]
    assert not (work / "mlflow.db").exists() and not work.exists()
    assert not (tmp_path / "prefect" / "prefect.db").exists()


def test_an_optional_source_may_match_nothing(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        f"sources:\n  - {{type: text, path: {BOTCHAN}}}\n"
        "  - {type: jsonl, path: later/*.jsonl, optional: true}\n"
    )
    require_source_files(load_config(path))  # no error
    with pytest.raises(ConfigError, match=r"sources\.1\.path: the glob matched no files"):
        require_source_files(load_config(path, ["sources.1.optional=false"]))


def test_a_train_request_holds_no_credentials_and_is_private(tmp_path, monkeypatch):
    secret = "s3cr3t-" + os.urandom(4).hex()
    uri = f"http://llmpipe:{secret}@mlflow.internal:5000"
    request = TrainRequest(
        model=ModelConfig(),
        train=TrainConfig(),
        data=PretrainData(shards_dir=str(tmp_path / "shards"), vocab_size=256),
        out_dir=str(tmp_path),
        mlflow_tracking_uri=uri,
    )
    path = request.to_json(tmp_path / "train_request.json")
    assert secret not in path.read_text()
    assert json.loads(path.read_text())["mlflow_tracking_uri"] == (
        "http://***:***@mlflow.internal:5000"
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # The training process gets the full URI from its environment, and checks it is the one.
    assert request.environment() == {"MLFLOW_TRACKING_URI": uri}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert TrainRequest.from_json(path).mlflow_tracking_uri == uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://other:pw@elsewhere:5000")
    with pytest.raises(ValueError, match="set MLFLOW_TRACKING_URI"):
        TrainRequest.from_json(path)


def test_train_launcher_allows_known_launchers_or_what_the_machine_opts_into(monkeypatch):
    monkeypatch.delenv("LLMPIPE_ALLOW_LAUNCHER", raising=False)
    quickstart = REPO / "configs" / "quickstart.yaml"
    for launcher in (
        "torchrun --nproc-per-node=8 -m pipeline.train {request}",
        "srun --ntasks-per-node=8 {python} -u -m pipeline.train {request}",
        "mpirun -np 2 {python} -m pipeline.train {request}",
    ):
        assert load_config(quickstart, [f"train.launcher={launcher}"]).train.launcher == launcher
    refused = "python3 -c 'import os; os.system(\"id\")'"
    with pytest.raises(ConfigError, match="train.launcher: .* is not an allowed launcher"):
        load_config(quickstart, [f"train.launcher={refused}"])
    with pytest.raises(ConfigError, match=r"finetune\.train\.launcher"):
        load_config(quickstart, [f"finetune.train.launcher={refused}"])
    monkeypatch.setenv("LLMPIPE_ALLOW_LAUNCHER", "1")
    assert load_config(quickstart, [f"train.launcher={refused}"]).train.launcher == refused


def test_a_launcher_runs_as_words_not_through_a_shell(tmp_path, monkeypatch):
    """Even an allowed launcher's arguments reach the program as they are: no shell."""
    from pipeline.train.launch import launch_training

    monkeypatch.setenv("LLMPIPE_ALLOW_LAUNCHER", "1")
    marker = tmp_path / "owned"
    said: list[str] = []
    launch_training(tmp_path / "r.json", said.append, f"echo {{request}}; touch {marker}")
    assert not marker.exists()
    assert said[-1] == f"{tmp_path / 'r.json'}; touch {marker}"
