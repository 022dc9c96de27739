"""Real `llmpipe run` processes stopped by signals, and a run whose tracking URI holds a password.

Slow (each test runs the pipeline up to pretraining or to the end in a process of its own, with
its own temporary Prefect server and MLflow store); CI runs them (.ci/run).

- SIGTERM to the run's process group (docker stop, Kubernetes), SIGTERM to the run process
  alone (Prefect cancelling a flow run's process), and Ctrl-C (SIGINT to the group), each in
  the middle of pretraining: the run exits 143 / 130; its Prefect flow run ends Crashed or
  Cancelled; its MLflow runs say KILLED (none RUNNING); no process it started is left (trainer,
  Prefect server); no lease is left. The time from the signal to the exit is printed.
- A tracking URI with user:password@, by --set and by $MLFLOW_TRACKING_URI, against a real
  MLflow server: the password is nowhere in the work dir, Prefect's database and result
  storage, the MLflow server's store and artifacts, or the run's output.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.stack import SERVER_COMMANDS, free_port, server_env, wait_healthy

REPO = Path(__file__).resolve().parents[1]
BOTCHAN = REPO / "data" / "sample" / "botchan.txt"
HANG = 60  # seconds: a run still alive this long after the signal hangs (the bug: forever)

pytestmark = pytest.mark.slow

# A small pipeline on one bundled text, with a long pretraining to interrupt.
CONFIG = f"""
name: lifecycle
sources:
  - {{type: text, name: botchan, path: {BOTCHAN}, split: paragraphs}}
clean: {{min_words: 5, min_stop_words: null, c4_min_sentences: null,
         fineweb_min_line_punct_ratio: null}}
tokenizer: {{vocab_size: 512}}
model: {{n_layer: 2, n_head: 2, n_embd: 64, block_size: 64}}
train: {{max_steps: 5000, batch_size: 8, warmup_steps: 5, val_every_steps: 1000,
         val_batches: 2, checkpoint_every_steps: 1000, progress_bar: false}}
evaluate: {{val_batches: 2, max_new_tokens: 8, tasks: [{{type: heldout}}]}}
register: {{model_name: lifecycle-gpt}}
"""
# As a terminal starts a job: SIGINT raises KeyboardInterrupt even where the test runner's own
# parent ignores it (a background CI job), which the child would otherwise inherit.
ENTRY = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from flows.cli import main; sys.exit(main())"
)


def _environment(home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(home), "PYTHONUNBUFFERED": "1", **extra}
    for key in (
        "PREFECT_API_URL",
        *(() if "MLFLOW_TRACKING_URI" in extra else ("MLFLOW_TRACKING_URI",)),
    ):
        env.pop(key, None)
    return env


def _start_run(tmp_path: Path, *options: str, env: dict[str, str]) -> subprocess.Popen:
    config = tmp_path / "lifecycle.yaml"
    config.write_text(CONFIG)
    log = open(tmp_path / "run.log", "a")  # noqa: SIM115 (the process writes it)
    return subprocess.Popen(
        [sys.executable, "-c", ENTRY, "run", str(config), "--workdir", str(tmp_path / "work")]
        + list(options),
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a container or a terminal job
    )


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            found[int(entry)] = (int(fields[1]), fields[0])
    return found


def _descendants(root: int) -> set[int]:
    table = _processes()
    found, frontier = set(), {root}
    while frontier:
        children = {pid for pid, (parent, _) in table.items() if parent in frontier}
        frontier = children - found
        found |= children
    return found


def _alive(pids: set[int]) -> set[int]:
    table = _processes()
    return {pid for pid in pids if pid in table and table[pid][1] != "Z"}


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {text!r}:\n{path.read_text()[-4000:]}")
        time.sleep(0.5)
    pytest.fail(f"no {text!r} within {timeout} s:\n{path.read_text()[-4000:]}")


@pytest.mark.parametrize(
    "signum, target",
    [(signal.SIGTERM, "group"), (signal.SIGTERM, "run process"), (signal.SIGINT, "group")],
    ids=["sigterm-group", "sigterm-run-process", "ctrl-c"],
)
def test_a_signal_during_pretraining_stops_the_run_and_says_so_everywhere(tmp_path, signum, target):
    proc = _start_run(tmp_path, env=_environment(tmp_path / "prefect"))
    log = tmp_path / "run.log"
    try:
        _wait_for(log, "step 20/", proc)  # mid-pretraining
        started = _descendants(proc.pid)
        commands = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in started}
        assert any(b"uvicorn" in c for c in commands.values()), commands  # the Prefect server
        assert any(b"pipeline.train" in c for c in commands.values()), commands  # the trainer
        sent = time.monotonic()
        if target == "group":
            os.killpg(proc.pid, signum)
        else:
            os.kill(proc.pid, signum)
        code = proc.wait(timeout=HANG)
        seconds = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(f"\n{signal.Signals(signum).name} to the {target}: exited {code} after {seconds:.1f} s")
    output = log.read_text(errors="replace")
    assert code == 128 + signum, output[-4000:]
    assert f"stopped by {signal.Signals(signum).name}" in output
    deadline = time.time() + 15
    while _alive(started) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(started), [commands.get(pid) for pid in _alive(started)]

    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        flow_runs = db.execute("select state_type from flow_run").fetchall()
        task_runs = dict(db.execute("select name, state_type from task_run").fetchall())
    assert flow_runs in ([("CRASHED",)], [("CANCELLED",)]), flow_runs
    assert task_runs["pretrain"] in ("CRASHED", "CANCELLED"), task_runs
    assert "RUNNING" not in task_runs.values()

    client = MlflowClient(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("llmpipe").experiment_id])
    status = {r.info.run_name: r.info.status for r in runs}
    parent = next(r.info.status for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent == "KILLED" and status["pretrain"] == "KILLED", status
    assert "RUNNING" not in status.values(), status
    assert not list((tmp_path / "work").rglob(".*.lease"))


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server on SQLite; its store and artifacts are scanned too."""
    port = free_port()
    store = tmp_path / "mlflow-server"
    store.mkdir()
    env = {
        **os.environ,
        **server_env("mlflow", "127.0.0.1", port, str(store / "artifacts")),
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{store / 'mlflow.db'}",
    }
    program = Path(sys.executable).with_name(SERVER_COMMANDS["mlflow"][0])
    server = subprocess.Popen(
        [str(program), *SERVER_COMMANDS["mlflow"][1:]],
        env=env,
        stdout=open(store / "server.log", "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", 180, server)
        yield port, store
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_a_tracking_uri_password_is_never_written(tmp_path, mlflow_server):
    port, store = mlflow_server
    by_set, by_env = (f"pw-{secrets.token_hex(8)}" for _ in range(2))
    uri = f"http://llmpipe:{{}}@127.0.0.1:{port}"
    home = tmp_path / "prefect"
    short = ["--set", "train.max_steps=20", "--set", "train.val_every_steps=10"]
    first = _start_run(
        tmp_path,
        *short,
        "--set",
        f"tracking.mlflow_tracking_uri={uri.format(by_set)}",
        env=_environment(home),
    )
    assert first.wait(timeout=1800) == 0, (tmp_path / "run.log").read_text()[-4000:]
    # Again with the URI in the environment, and a training change: pretraining runs again and
    # writes its request once more (the data stages are reused).
    second = _start_run(
        tmp_path,
        *short,
        "--set",
        "train.learning_rate=0.002",
        env=_environment(home, MLFLOW_TRACKING_URI=uri.format(by_env)),
    )
    assert second.wait(timeout=1800) == 0, (tmp_path / "run.log").read_text()[-4000:]

    scanned, leaks = 0, []
    for root in (tmp_path / "work", home, store, tmp_path / "run.log"):
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file():
                scanned += 1
                data = path.read_bytes()
                leaks += [f"{path}: {s}" for s in (by_set, by_env) if s.encode() in data]
    assert scanned > 50 and (home / "prefect.db").is_file()
    assert not leaks, leaks
    requests = list((tmp_path / "work" / "pretrain").glob("*/train_request.json"))
    assert len(requests) == 2
    assert all(
        json.loads(r.read_text())["mlflow_tracking_uri"].startswith("http://***:***@")
        for r in requests
    )

    # Registered once per run, each version keyed by its register stage's fingerprint.
    client = MlflowClient(f"http://127.0.0.1:{port}", registry_uri=f"http://127.0.0.1:{port}")
    keys = {
        v.tags.get("llmpipe.registration_key")
        for v in client.search_model_versions("name = 'lifecycle-gpt'")
    }
    assert keys == {p.name for p in (tmp_path / "work" / "register").iterdir()}
