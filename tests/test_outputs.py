"""Stage output folders: fingerprints, atomic publication, crash leftovers and leases."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.outputs import LeaseHeld, StageOutput, building, fingerprint, lease, publish


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
        publish(out, {"counts": {"n": 1}})
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
