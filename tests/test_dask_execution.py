"""The data stages on a real local Dask cluster (prefect-dask's DaskTaskRunner, 2 worker
processes) give the same documents as one process: ingest, clean and dedup through the real
Prefect flow against the same stages run in this process, compared document for document."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.pipeline import pipeline_flow
from pipeline.config import load_config
from pipeline.dag import plan, run_stage, select
from pipeline.documents import iter_documents
from pipeline.quarantine import read_quarantine

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
DATA_STAGES = ["ingest", "clean", "dedup"]
# Small shards, so that each stage has several units of work to spread over the workers.
SMALL_SHARDS = ["ingest.max_docs_per_shard=120", "dedup.repeated_spans=paragraphs"]


def _outputs(summary: dict) -> dict[str, Path]:
    return {name: Path(summary["stages"][name]["output"]) for name in DATA_STAGES}


@pytest.mark.dask
@pytest.mark.slow  # ~1 min: .ci/run runs it on its own line
def test_dask_cluster_output_equals_single_process(tmp_path, prefect_server):
    # One process: the stages as the flow's tasks run them, without the orchestration.
    config = load_config(QUICKSTART, [*SMALL_SHARDS, "execution.workers=1"])
    local = {"stages": {}}
    for planned in select(plan(config, tmp_path / "local"), only=DATA_STAGES):
        result = run_stage(planned, config, log=lambda _: None)
        local["stages"][planned.name] = {**result.to_dict(), "output": str(planned.output.path)}
    dask = pipeline_flow(
        QUICKSTART,
        workdir=str(tmp_path / "dask"),
        overrides=[*SMALL_SHARDS, "execution.runner=dask", "execution.workers=2"],
        only=DATA_STAGES,
    )
    assert list(dask["stages"]) == DATA_STAGES
    assert not any(r["cached"] for r in dask["stages"].values())
    # The units ran through a Dask client of a 2-worker cluster.
    for name in ("clean", "dedup"):
        assert dask["stages"][name]["phases"]["executor"] == "DaskExecutor(2)"
        assert local["stages"][name]["phases"]["executor"] == "SerialExecutor(1)"
        assert (
            dask["stages"][name]["phases"]["units"] == local["stages"][name]["phases"]["units"] > 1
        )

    ours, theirs = _outputs(local), _outputs(dask)
    for name in DATA_STAGES:
        assert ours[name].name == theirs[name].name  # the same fingerprint: same config
        assert dask["stages"][name]["counts"] == local["stages"][name]["counts"], name
        documents = list(iter_documents(ours[name]))
        assert documents == list(iter_documents(theirs[name])), name
        assert documents
        assert read_quarantine(ours[name]) == read_quarantine(theirs[name]), name
        files = sorted(p.name for p in ours[name].iterdir() if p.name != "_manifest.json")
        assert files == sorted(p.name for p in theirs[name].iterdir() if p.name != "_manifest.json")
    for table in ("clean/signals.parquet", "dedup/duplicates.parquet"):
        stage, name = table.split("/")
        assert pq.read_table(ours[stage] / name) == pq.read_table(theirs[stage] / name)
    counts = {name: local["stages"][name]["counts"] for name in DATA_STAGES}
    assert counts["ingest"]["documents"] == (
        counts["clean"]["rejected"] + counts["dedup"]["duplicates"] + counts["dedup"]["kept"]
    )
