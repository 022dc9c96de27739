"""Servers the scale-out tests start on 127.0.0.1 as their own processes: a Dask cluster
started the way a cluster is (`dask scheduler`, `dask worker`s), and moto's S3 server.

In: a folder for their logs and state. Out: `Cluster` (its address, its workers by name, kill
and stop) and `s3_server()` (a context manager: the endpoint's environment set in this
process while it runs, an s3fs file system with the bucket `BUCKET` made).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from flows.stack import free_port

REPO = Path(__file__).resolve().parents[1]
BUCKET = "llmpipe-test"


class Cluster:
    """A scheduler and its workers, each its own process group (a worker's nanny and the
    worker process die together: a lost machine)."""

    def __init__(
        self, root: Path, workers: int = 2, worker_env: dict[str, dict[str, str]] | None = None
    ):
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}/status"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
        self.logs = root / "logs"
        self.logs.mkdir(parents=True)
        common = dict(cwd=root, env=env, start_new_session=True, stderr=subprocess.STDOUT)
        scheduler = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
        scheduler += ["--host", "127.0.0.1", "--port", str(self.port)]
        scheduler += ["--dashboard-address", f"127.0.0.1:{self.dashboard_port}"]
        self.scheduler = subprocess.Popen(
            scheduler, stdout=(self.logs / "scheduler.log").open("w"), **common
        )
        self.workers: dict[str, subprocess.Popen] = {}
        for i in range(workers):
            name = f"w{i}"
            command = [sys.executable, "-m", "distributed.cli.dask_worker", self.address]
            command += ["--nthreads", "1", "--name", name, "--host", "127.0.0.1"]
            command += ["--no-dashboard", "--local-directory", str(root / name)]
            own = {**common, "env": {**env, **(worker_env or {}).get(name, {})}}
            self.workers[name] = subprocess.Popen(
                command, stdout=(self.logs / f"{name}.log").open("w"), **own
            )

    def client(self):
        from distributed import Client

        return Client(self.address, timeout=60, set_as_default=False)

    def wait(self, workers: int) -> None:
        with self.client() as client:
            client.wait_for_workers(workers, timeout=120)

    def kill(self, name: str) -> None:
        os.killpg(self.workers[name].pid, signal.SIGKILL)
        self.workers[name].wait()

    def stop(self) -> None:
        for process in [*self.workers.values(), self.scheduler]:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in [*self.workers.values(), self.scheduler]:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def log_tail(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:]
            for p in sorted(self.logs.iterdir())
        )


@contextmanager
def s3_server(root: Path) -> Iterator:
    """moto's S3 server on 127.0.0.1, and the environment every S3 client here reads."""
    import s3fs

    port = free_port()
    log = root / "moto.log"
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=2).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"moto_server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,  # MLflow's artifact client
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    # fsspec caches file systems by their arguments, not by the environment: one made for an
    # earlier server (another test module) would still talk to that server's dead port
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    try:
        yield fs
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        s3fs.S3FileSystem.clear_instance_cache()
        server.terminate()
        server.wait(timeout=20)
