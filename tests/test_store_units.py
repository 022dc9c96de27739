"""The units of one stage on machines that share no disk, only an object store: moto's S3
server on 127.0.0.1, and "machines" that are processes with different caches
(`LLMPIPE_CACHE_DIR`).

In: a unit's part, a unit's paths; the quickstart sample in small shards, `workdir: s3://...`.
Out: checks that a part without its marker is never merged and that a unit's rerun replaces its
part; that a unit's paths are rewritten and nothing else; that ingest, clean
and dedup give the same documents as one local process when their units run in worker
processes of another cache (`StoreUnits` over a `ProcessExecutor`), and on a Dask cluster
started the way a cluster is (`dask scheduler`, two `dask worker`s each with its own cache),
the flow connecting by `execution.dask_address`: the units of other machines ran in their own
caches (their staged parts are there), the flow process's cache got only complete outputs, and
the store keeps no part once the outputs are published.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster_helpers import BUCKET, Cluster
from cluster_helpers import s3_server as start_s3_server

from pipeline.config import load_config
from pipeline.dag import plan, run_stage, select
from pipeline.documents import iter_documents
from pipeline.outputs import MANIFEST, StageOutput
from pipeline.parallel import ProcessExecutor
from pipeline.quarantine import read_quarantine
from pipeline.store import CACHE_ENV, open_workdir
from pipeline.store_units import PART_MARKER, PARTS, StoreUnits, pull_part, push_part, rewrite

pytest.importorskip("s3fs", reason="the object-store tests need s3fs (the dev extra)")
pytest.importorskip("moto", reason="the object-store tests need moto[server] (the dev extra)")

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
DATA_STAGES = ["ingest", "clean", "dedup"]
# Small shards and split files, so that each stage has several units of work.
SMALL = [
    "ingest.max_docs_per_shard=120",
    "ingest.split_bytes=20000",
    "dedup.repeated_spans=paragraphs",
]


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    with start_s3_server(tmp_path_factory.mktemp("moto")) as fs:
        yield fs


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, Path]:
    """The data stages in this process, on a local work dir."""
    config = load_config(QUICKSTART, [*SMALL, "execution.workers=1"])
    outputs = {}
    for planned in select(plan(config, tmp_path_factory.mktemp("local")), only=DATA_STAGES):
        run_stage(planned, config, log=lambda _: None)
        outputs[planned.name] = planned.output.path
    return outputs


def _same_documents(ours: Path, theirs: Path, name: str) -> None:
    assert ours.name == theirs.name, name  # the same fingerprint: the same config
    documents = list(iter_documents(ours))
    assert documents, name
    assert documents == list(iter_documents(theirs)), name
    assert read_quarantine(ours) == read_quarantine(theirs), name
    listed = sorted(p.name for p in ours.iterdir() if p.name != MANIFEST)
    assert listed == sorted(p.name for p in theirs.iterdir() if p.name != MANIFEST), name


def _hidden(cache: Path) -> list[str]:
    """What a machine's cache holds of a stage in progress: partial, staged, unit folders."""
    return sorted(
        p.relative_to(cache).as_posix()
        for prefix in (".partial-", ".staged-", ".units-")
        for p in cache.glob(f"work/*/*/{prefix}*")
    )


def test_a_part_is_merged_only_with_its_marker_and_a_rerun_replaces_it(
    s3_server, tmp_path, monkeypatch
):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "machine"))
    work = open_workdir(f"s3://{BUCKET}/parts-{tmp_path.name}")
    output = StageOutput(work.local, "clean", "a" * 16)
    unit = tmp_path / "unit"
    (unit / "sub").mkdir(parents=True)
    (unit / "sub" / "part-1.parquet").write_bytes(b"one")
    (unit / "stale.txt").write_bytes(b"from a unit that died pushing")
    # A unit that died pushing: files on the store, no marker. Never merged.
    prefix = f"{work.store.root}/clean/{'a' * 16}/{PARTS}/m000-u00001"
    s3_server.put_file(str(unit / "stale.txt"), f"{prefix}/stale.txt")
    with pytest.raises(RuntimeError, match="m000-u00001 of clean has no marker"):
        pull_part(work.store, output, "m000-u00001", tmp_path / "merged")
    # Its rerun deletes the leftovers, pushes its files, then the marker.
    push_part(work.store, output, "m000-u00001", unit, ["sub/part-1.parquet"])
    assert not s3_server.exists(f"{prefix}/stale.txt")
    assert pull_part(work.store, output, "m000-u00001", tmp_path / "merged") == [
        "sub/part-1.parquet"
    ]
    assert (tmp_path / "merged" / "sub" / "part-1.parquet").read_bytes() == b"one"
    assert not (tmp_path / "merged" / "stale.txt").exists()


def test_rewrite_maps_the_paths_of_a_unit_and_nothing_else(tmp_path):
    from pipeline.clean.stage import CleanUnit
    from pipeline.config import CleanConfig

    here, there = tmp_path / "a", tmp_path / "b"
    unit = CleanUnit(3, str(here / "ingest" / "f" / "s.parquet"), str(here / "x"), CleanConfig())

    def move(path: str) -> str | None:
        return path.replace(str(here), str(there)) if path.startswith(f"{here}/") else None

    moved = rewrite(
        {"unit": unit, "files": (str(here / "y"), Path(here / "z"), "hello", str(tmp_path))}, move
    )
    assert moved["unit"] == CleanUnit(
        3, str(there / "ingest" / "f" / "s.parquet"), str(there / "x"), unit.config
    )
    assert moved["files"] == (str(there / "y"), there / "z", "hello", str(tmp_path))
    assert rewrite(unit, lambda _: None) is unit  # nothing to change: the same object


def test_units_in_processes_of_another_cache_meet_through_the_store(
    s3_server, one_process, tmp_path, monkeypatch
):
    url = f"s3://{BUCKET}/processes-{tmp_path.name}"
    config = load_config(QUICKSTART, SMALL)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "stage-machine"))
    work = open_workdir(url)
    # The worker processes start (spawn) on the first map, with this environment: another cache.
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "unit-machine"))
    with ProcessExecutor(2) as processes:
        for planned in select(plan(config, work.local), only=DATA_STAGES):
            executor = StoreUnits(processes, work.store, planned.output)
            result = run_stage(
                planned, config, log=lambda _: None, executor=executor, store=work.store
            )
            units = result.details.get("phases", result.stats)["units"]
            assert units > 1, planned.name
            # parts of units that ran in the other cache, merged from the store
            assert any("-u" in key for key in executor.parts), planned.name
            _same_documents(planned.output.path, one_process[planned.name], planned.name)
            prefix = f"{work.store.root}/{planned.name}/{planned.output.fingerprint}"
            assert s3_server.exists(f"{prefix}/{MANIFEST}")
            assert not s3_server.exists(f"{prefix}/{PARTS}")  # gone once published
    # The units' machine: no stage ran there, and only the last stage's staged parts are left
    # (a stage's are removed once a unit there reads its published output).
    left = _hidden(tmp_path / "unit-machine")
    assert left and all(path.split("/")[2] == "dedup" for path in left), left
    assert not [path for path in left if "/.partial-" in path]


@pytest.mark.dask
@pytest.mark.slow  # ~1 min: .ci/run runs it
def test_data_stages_on_a_cluster_without_a_shared_disk(
    s3_server, one_process, tmp_path, monkeypatch
):
    import boto3

    from flows.pipeline import pipeline_flow

    # A versioned bucket: the parts, deleted once the output is published, stay listable.
    s3 = boto3.client("s3")
    bucket = f"versioned-{tmp_path.name.lower().replace('_', '-')}"[:63]
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    url = f"s3://{bucket}/run"
    caches = {name: tmp_path / f"cache-{name}" for name in ("w0", "w1")}
    cluster = Cluster(
        tmp_path / "cluster",
        worker_env={name: {CACHE_ENV: str(path)} for name, path in caches.items()},
    )
    try:
        cluster.wait(2)
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache-flow"))
        summary = pipeline_flow(
            QUICKSTART,
            workdir=url,
            overrides=[
                *SMALL,
                "execution.runner=dask",
                f"execution.dask_address={cluster.address}",
            ],
            only=DATA_STAGES,
        )
    except BaseException:
        print(cluster.log_tail())
        raise
    finally:
        cluster.stop()
    root = url.removeprefix("s3://")
    fs = s3_server
    for name in DATA_STAGES:
        result = summary["stages"][name]
        if name != "ingest":  # ingest's units are in its stats
            assert result["phases"]["units"] > 1, name
            assert result["phases"]["executor"] == "StoreUnits(DaskExecutor(2))", name
        # The flow process's cache: the complete output, pulled from the store.
        output = Path(result["output"])
        assert output.is_relative_to(tmp_path / "cache-flow")
        _same_documents(output, one_process[name], name)
        prefix = f"{root}/{name}/{result['fingerprint']}"
        fs.invalidate_cache()
        assert fs.exists(f"{prefix}/{MANIFEST}")
        # gone once published (s3fs lists a prefix with deleted versions as a folder: boto3)
        parts = f"run/{name}/{result['fingerprint']}/{PARTS}/"
        assert s3.list_objects_v2(Bucket=bucket, Prefix=parts)["KeyCount"] == 0
        # Units ran on the machine that did not run the stage, in its own cache, and their
        # parts went through the store, each with its marker.
        keys = [
            v["Key"]
            for page in s3.get_paginator("list_object_versions").paginate(
                Bucket=bucket, Prefix=parts
            )
            for v in page.get("Versions", [])
        ]
        marked = {k.split("/")[-2] for k in keys if k.endswith(f"/{PART_MARKER}")}
        assert any("-u" in part for part in marked), f"{name}: no unit's part: {keys}"
    # Nothing of a stage in progress ever reached the flow process's cache.
    assert _hidden(tmp_path / "cache-flow") == []
