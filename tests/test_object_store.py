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
import threading
import time
from pathlib import Path

import pytest
from cluster_helpers import BUCKET
from cluster_helpers import s3_server as start_s3_server

from pipeline.config import ConfigError
from pipeline.outputs import MANIFEST, StageOutput, StageResult, building, publish
from pipeline.store import CACHE_ENV, check_workdir, open_workdir

s3fs = pytest.importorskip("s3fs", reason="the object-store tests need s3fs (the dev extra)")
pytest.importorskip("moto", reason="the object-store tests need moto[server] (the dev extra)")

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    with start_s3_server(tmp_path_factory.mktemp("moto")) as fs:
        yield fs


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


def test_a_lease_on_the_store_is_exclusive_beats_and_is_taken_over_by_one_machine(
    s3_server, tmp_path, monkeypatch
):
    """The lease object under conditional writes: held -> a second holder is refused (naming
    the owner); a gone owner's lease (another host, no heartbeat) is taken over by exactly one
    of two machines that both found it stale, and its old holder's heartbeat learns it lost it."""
    from pipeline import leases
    from pipeline.leases import LeaseHeld, lease
    from pipeline.store_lease import store_lease

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "machine-a"))
    work = open_workdir(f"s3://{BUCKET}/lease-{tmp_path.name}")
    output = StageOutput(work.local, "toy", "e" * 16)
    key = f"{BUCKET}/lease-{tmp_path.name}/toy/.{'e' * 16}.lease"
    with lease(store_lease(work.store, output)):
        owner = json.loads(s3_server.cat_file(key))
        assert owner["pid"] == os.getpid()
        with pytest.raises(LeaseHeld, match=f"held by process {os.getpid()}"):
            with lease(store_lease(work.store, output)):
                pass
    s3_server.invalidate_cache()
    assert not s3_server.exists(key)  # released
    # A lease left by a machine that is gone: another host, no heartbeat for a while.
    monkeypatch.setattr(leases, "LEASE_STALE_SECONDS", 1.0)
    gone = store_lease(work.store, output)
    assert gone.create(json.dumps({"pid": 1, "host": "gone-machine", "since": 0}))
    time.sleep(2.5)  # the store's Date and Last-Modified have whole-second resolution
    first, second = store_lease(work.store, output), store_lease(work.store, output)
    text, age = first.read()
    assert json.loads(text)["host"] == "gone-machine" and age >= 1
    assert second.read() is not None
    assert first.take_over(text, '{"taker": 1}')
    assert not second.take_over(text, '{"taker": 2}')  # the version it read is gone
    assert not gone.beat(json.dumps({"host": "gone-machine"}))  # lost: it stops beating
    assert json.loads(s3_server.cat_file(key)) == {"taker": 1}
    assert first.beat('{"taker": 1}') and first.release('{"taker": 1}')
    # Through lease(): the stale lease is taken over at once, with a line saying why.
    assert gone.create(json.dumps({"pid": 1, "host": "gone-machine", "since": 0}))
    time.sleep(2.5)
    said: list[str] = []
    with lease(store_lease(work.store, output), log=said.append):
        assert json.loads(s3_server.cat_file(key))["pid"] == os.getpid()
    assert any("taking over" in line and "gone-machine" in line for line in said), said


def test_two_machines_that_start_one_stage_at_once_compute_it_once(
    s3_server, tmp_path, monkeypatch
):
    """Two machines (two caches) run one stage on one s3:// work dir at the same moment: one
    computes and pushes it, the other waits on the store's lease, then pulls what was pushed."""
    from pipeline.config import load_config
    from pipeline.dag import plan, run_stage
    from pipeline.store import Workdir

    (tmp_path / "a.txt").write_text("A short document about two machines and one lease.\n")
    config_path = tmp_path / "c.yaml"
    config_path.write_text("sources: [{type: text, path: a.txt}]\n")
    config = load_config(config_path)
    url = f"s3://{BUCKET}/race-{tmp_path.name}"
    machines: dict[str, Workdir] = {}
    for name in ("machine-a", "machine-b"):
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / name))
        machines[name] = open_workdir(url)
    start = threading.Barrier(2)
    results: dict[str, object] = {}
    said: dict[str, list[str]] = {name: [] for name in machines}

    def run(name: str) -> None:
        work = machines[name]
        ingest = plan(config, work.local)[0]
        start.wait()
        results[name] = run_stage(ingest, config, log=said[name].append, store=work.store)

    threads = [threading.Thread(target=run, args=(name,)) for name in machines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(r.reused for r in results.values()) == [False, True], said
    outputs = {name: plan(config, work.local)[0].output for name, work in machines.items()}
    assert all(output.complete() for output in outputs.values())
    a, b = (_files(output.path) for output in outputs.values())
    assert a == b  # the waiting machine pulled the one that was pushed
    fingerprint = outputs["machine-a"].fingerprint
    s3_server.invalidate_cache()
    assert s3_server.exists(f"{BUCKET}/race-{tmp_path.name}/ingest/{fingerprint}/{MANIFEST}")
    assert not s3_server.exists(f"{BUCKET}/race-{tmp_path.name}/ingest/.{fingerprint}.lease")


def test_a_store_without_conditional_writes_runs_the_stage_without_a_lease_and_says_so(
    s3_server, tmp_path, monkeypatch
):
    """An S3-compatible store that answers a conditional PUT with NotImplemented (as one that
    lacks them does): the stage runs and is pushed as before store leases, and the log says
    there is no lease. Any other PUT goes to the real server."""
    from botocore.exceptions import ClientError

    from pipeline.config import load_config
    from pipeline.dag import plan, run_stage
    from pipeline.store_lease import StoreLease

    real_call = StoreLease._call

    def no_conditions(self, method, **kwargs):
        if "IfNoneMatch" in kwargs or "IfMatch" in kwargs:
            error = {"Error": {"Code": "NotImplemented", "Message": "not implemented"}}
            raise OSError(
                "A header you provided implies functionality that is not implemented"
            ) from ClientError(error, "PutObject")
        return real_call(self, method, **kwargs)

    monkeypatch.setattr(StoreLease, "_call", no_conditions)
    (tmp_path / "a.txt").write_text("A short document about a store without conditions.\n")
    config_path = tmp_path / "c.yaml"
    config_path.write_text("sources: [{type: text, path: a.txt}]\n")
    config = load_config(config_path)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "machine-a"))
    work = open_workdir(f"s3://{BUCKET}/nocond-{tmp_path.name}")
    ingest = plan(config, work.local)[0]
    said: list[str] = []
    result = run_stage(ingest, config, log=said.append, store=work.store)
    assert result.reused is False and work.store.complete(ingest.output)
    assert any("no lease on the store" in line and "not implemented" in line for line in said)


def test_a_work_dir_url_without_its_file_system_is_a_config_error_naming_workdir():
    with pytest.raises(ConfigError, match="workdir: nosuchfs://bucket/x"):
        open_workdir("nosuchfs://bucket/x")
    with pytest.raises(ConfigError, match="workdir: s3://b/x: an incremental run"):
        check_workdir("s3://b/x", incremental=True)
    check_workdir("s3://b/x")
    check_workdir("work", incremental=True)


def test_llmpipe_run_refuses_an_s3_incremental_work_dir_before_it_starts(tmp_path, capsys):
    from flows.cli import main

    code = main(
        ["run", QUICKSTART, "--workdir", f"s3://{BUCKET}/x", "--set", "run.mode=incremental"]
    )
    assert code == 2
    assert "error: workdir: s3://" in capsys.readouterr().err


# The quickstart, shrunk to run in about a minute (as tests/test_pipeline_e2e.py does).
SHRINK = [
    "model.n_layer=2",
    "model.n_embd=64",
    "model.n_head=2",
    "model.block_size=64",
    "tokenizer.vocab_size=1024",
    "train.max_steps=20",
    "train.batch_size=8",
    "train.warmup_steps=5",
    "train.val_every_steps=10",
    "train.val_batches=2",
    "train.checkpoint_every_steps=10",
    "train.progress_bar=false",
    "evaluate.val_batches=4",
    "evaluate.max_new_tokens=8",
    "register.model_name=s3-gpt",
]


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow  # ~3 min: .ci/run runs it
def test_the_pipeline_on_an_s3_work_dir(s3_server, prefect_server, tmp_path, monkeypatch):
    from flows.pipeline import pipeline_flow

    root = f"{BUCKET}/e2e-{tmp_path.name}"
    url = f"s3://{root}"
    # MLflow as a tracking server would be: one store every machine reaches. Given by the
    # environment, which monkeypatch restores (mlflow.set_tracking_uri, called by the register
    # stage, sets MLFLOW_TRACKING_URI in this process: it would leak into later tests).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    overrides = SHRINK

    def run(machine: str) -> dict:
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / machine))
        return pipeline_flow(QUICKSTART, workdir=url, overrides=overrides)

    first = run("machine-a")
    assert first["workdir"] == url
    stages = first["stages"]
    assert "pretrain" in stages and "register" in stages
    assert not any(r["cached"] for r in stages.values())
    for name, result in stages.items():
        prefix = f"{root}/{name}/{result['fingerprint']}"
        assert s3_server.exists(f"{prefix}/{MANIFEST}"), name
        local = Path(result["output"])
        assert local.is_relative_to(tmp_path / "machine-a")
        on_store = {p[len(prefix) + 1 :]: s3_server.cat_file(p) for p in s3_server.find(prefix)}
        assert on_store == _files(local), name
    # What `llmpipe run` prints: the URL, and the cache its next commands use here.
    from flows.ui import print_summary

    printed: list[str] = []
    print_summary(first, out=printed.append)
    text = "\n".join(printed)
    assert f"work dir:     {url} (cache here: {tmp_path / 'machine-a'}" in text
    assert f"--workdir {first['local_workdir']}" in text
    # MLflow's artifacts (stage files, the logged model) on the same store.
    assert s3_server.find(f"{root}/mlartifacts")
    # Another machine: an empty cache. Everything comes from the store, nothing runs again.
    second = run("machine-b")
    assert all(r["cached"] for r in second["stages"].values()), {
        n: r["cached"] for n, r in second["stages"].items()
    }
    tokens = Path(second["stages"]["shards"]["output"])
    assert tokens.is_relative_to(tmp_path / "machine-b")  # what training reads: the cache
    assert _files(tokens) == _files(Path(stages["shards"]["output"]))
    # A crashed push of dedup: its files on the store, no manifest. A third machine does not
    # take it for complete: dedup runs again (same documents), everything else is cached.
    dedup = f"{root}/dedup/{stages['dedup']['fingerprint']}"
    s3_server.rm(f"{dedup}/{MANIFEST}")
    third = run("machine-c")
    assert not third["stages"]["dedup"]["cached"]
    assert all(r["cached"] for n, r in third["stages"].items() if n != "dedup")
    assert s3_server.exists(f"{dedup}/{MANIFEST}")
    again = _files(Path(third["stages"]["dedup"]["output"]))
    before = _files(Path(stages["dedup"]["output"]))
    assert again.keys() == before.keys()
    assert {k: v for k, v in again.items() if k != MANIFEST} == {
        k: v for k, v in before.items() if k != MANIFEST
    }


@pytest.mark.slow  # ~1 min: .ci/run runs it
def test_a_sweep_on_an_s3_work_dir(s3_server, prefect_server, tmp_path, monkeypatch):
    """`llmpipe sweep --workdir s3://...`: the variants meet on the store (shared stages once),
    the sweep's result names the URL, and no local folder named after the URL is made."""
    from test_sweep import _sweep_config

    from flows.sweep import sweep_flow
    from pipeline.sweep import expand

    root = f"{BUCKET}/sweep-{tmp_path.name}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    variants = expand(["tokenizer.vocab_size=300,360"])
    result = sweep_flow(
        str(_sweep_config(tmp_path)), [v.to_dict() for v in variants], workdir=f"s3://{root}"
    )
    assert result["workdir"] == f"s3://{root}"
    assert result["stage_executions"]["ingest"] == 1 and result["stage_executions"]["shards"] == 2
    for outputs in result["outputs"]:
        for name, local in outputs.items():
            assert Path(local).is_relative_to(tmp_path / "cache"), name
            fingerprint = Path(local).name
            assert s3_server.exists(f"{root}/{name}/{fingerprint}/{MANIFEST}"), name
    assert not (tmp_path / "s3:").exists()
    assert s3_server.find(f"{root}/mlartifacts")
