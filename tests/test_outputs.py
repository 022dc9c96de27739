"""Stage output folders: fingerprints, atomic publication, crash leftovers and leases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from pipeline import leases
from pipeline.leases import LeaseHeld, lease, lease_owner
from pipeline.outputs import StageOutput, StageResult, building, fingerprint, publish


def test_fingerprint_depends_on_everything_that_changes_output():
    base = fingerprint("clean", 1, {"min_words": 5}, ["ingest:abc"])
    assert base == fingerprint("clean", 1, {"min_words": 5}, ["ingest:abc"])
    assert base != fingerprint("clean", 2, {"min_words": 5}, ["ingest:abc"])
    assert base != fingerprint("clean", 1, {"min_words": 6}, ["ingest:abc"])
    assert base != fingerprint("clean", 1, {"min_words": 5}, ["ingest:abd"])


def test_publish_is_atomic_and_a_crash_leaves_nothing_complete(tmp_path):
    out = StageOutput(tmp_path, "clean", "f00")
    with pytest.raises(RuntimeError):
        with building(out) as partial:
            (partial / "part-00000.parquet").write_bytes(b"half")
            raise RuntimeError("killed mid-stage")
    assert not out.complete() and not out.path.exists()
    assert not out.lease.exists()
    # The next attempt starts from an empty partial folder, then publishes.
    with building(out) as partial:
        assert list(partial.iterdir()) == []
        (partial / "data.txt").write_text("ok")
        publish(out, StageResult(counts={"n": 1}))
    assert out.complete()
    assert json.loads((out.path / "_manifest.json").read_text())["counts"] == {"n": 1}


def test_keep_partial_keeps_a_killed_attempts_files(tmp_path):
    out = StageOutput(tmp_path, "pretrain", "f01")
    out.partial.mkdir(parents=True)
    (out.partial / "checkpoint").write_text("step 100")
    with building(out, keep_partial=True) as partial:
        assert (partial / "checkpoint").read_text() == "step 100"


def test_lease_excludes_a_live_owner_and_takes_over_a_dead_one(tmp_path):
    path = tmp_path / "stage" / ".f.lease"
    with lease(path):
        with pytest.raises(LeaseHeld):
            with lease(path):
                pass
    # A lease written by a process that has since exited is stale and taken over.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    import socket

    path.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with lease(path):
        assert json.loads(path.read_text())["pid"] != int(dead.stdout)
    assert not path.exists()


def _write_lease(path, **owner):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**lease_owner(), **owner}))


def test_a_lease_whose_pid_now_belongs_to_another_process_is_taken_over_at_once(tmp_path):
    """A restarted container's new process gets the dead run's PID: here this test's own PID,
    alive, but a process that started at another time than the lease's owner."""
    path = tmp_path / "stage" / ".f.lease"
    me = lease_owner()
    _write_lease(path, process_start=me["process_start"] - 1000, since=time.time() - 3600)
    said = []
    with lease(path, wait_seconds=24 * 3600, log=said.append):
        assert json.loads(path.read_text())["process_start"] == me["process_start"]
    # Taken over without waiting, and the log says from whom and why.
    assert len(said) == 1 and "taking over" in said[0], said
    assert f"process {os.getpid()}" in said[0] and "now belongs to another process" in said[0]
    assert not path.exists()


def test_a_live_owner_is_named_by_the_waiting_run_then_released(tmp_path):
    path = tmp_path / "stage" / ".f.lease"
    held, release = threading.Event(), threading.Event()

    def owner():
        with lease(path):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=owner)
    thread.start()
    held.wait(30)
    said = []
    with pytest.raises(LeaseHeld, match=f"process {os.getpid()} on host"):
        with lease(path, log=said.append):
            pass
    threading.Timer(1.0, release.set).start()
    with lease(path, wait_seconds=60, log=said.append):
        pass
    thread.join()
    waiting = [line for line in said if line.startswith("waiting for the lease")]
    assert len(waiting) == 1, said
    assert str(path) in waiting[0] and f"process {os.getpid()}" in waiting[0]
    assert "since" in waiting[0] and "heartbeat" in waiting[0]


def test_a_lease_from_another_host_lives_by_its_heartbeat(tmp_path, monkeypatch):
    path = tmp_path / "stage" / ".f.lease"
    _write_lease(path, host="another-host", pid=1)
    with pytest.raises(LeaseHeld, match="another-host"):
        with lease(path):
            pass
    old = time.time() - leases.LEASE_STALE_SECONDS - 5  # no heartbeat for a while
    os.utime(path, (old, old))
    said = []
    with lease(path, log=said.append):
        pass
    assert "no heartbeat" in said[0], said


def test_the_owner_touches_its_lease_while_it_works(tmp_path, monkeypatch):
    monkeypatch.setattr(leases, "LEASE_HEARTBEAT_SECONDS", 0.05)
    path = tmp_path / "stage" / ".f.lease"
    with lease(path):
        old = time.time() - 100
        os.utime(path, (old, old))
        deadline = time.time() + 10
        while path.stat().st_mtime < old + 50 and time.time() < deadline:
            time.sleep(0.05)
        assert path.stat().st_mtime > old + 50


def test_a_lease_taken_over_meanwhile_is_not_removed_by_its_old_owner(tmp_path):
    path = tmp_path / "stage" / ".f.lease"
    with lease(path):
        path.unlink()  # as if another run had judged it stale and taken it
        _write_lease(path, host="another-host", pid=1)
    assert json.loads(path.read_text())["host"] == "another-host"


def test_a_result_round_trips_through_its_manifest_and_reads_the_flat_layout(tmp_path):
    """The manifest stores a result flat (counts, stats, metrics, files, each table and detail
    by name, the record); reading it back gives the same typed result."""
    result = StageResult(
        counts={"documents": 3, "quarantined_by_reason": {"bad_json": 1}},
        stats={"vocab_size": 512},
        metrics={"val_loss": 2.5},
        tables={"eval_table": [{"task": "val", "metric": "loss", "value": 2.5}]},
        files={"model": "final"},
        details={"registered": {"version": "3"}},
        inputs={"shards": "abc"},
    )
    out = StageOutput(tmp_path, "evaluate", "f00")
    with building(out):
        publish(out, result)
    manifest = json.loads((out.path / "_manifest.json").read_text())
    assert manifest["eval_table"][0]["task"] == "val" and manifest["registered"]["version"] == "3"
    back = out.result()
    assert back.tables == result.tables and back.details == result.details
    assert (back.counts, back.stats, back.metrics, back.files) == (
        result.counts,
        result.stats,
        result.metrics,
        result.files,
    )
    assert (
        back.stage == "evaluate" and back.fingerprint == "f00" and back.inputs == {"shards": "abc"}
    )


def test_a_result_refuses_a_list_as_a_detail_and_reserved_names():
    with pytest.raises(TypeError, match="a list of rows is a table"):
        StageResult(details={"examples": [{"a": 1}]})
    with pytest.raises(ValueError, match="used twice or reserved"):
        StageResult(tables={"counts": []})


def test_per_unit_counts_merge_once_for_every_stage():
    from pipeline.outputs import merge_counts

    total: dict = {}
    merge_counts(total, {"kept": 2, "by_reason": {"short": 1}, "languages": {"en": 2}})
    merge_counts(total, {"kept": 3, "by_reason": {"short": 2, "long": 1}, "languages": {}})
    assert total == {"kept": 5, "by_reason": {"short": 3, "long": 1}, "languages": {"en": 2}}
