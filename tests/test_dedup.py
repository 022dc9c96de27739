"""Dedup: exact and normalized duplicates go, the first occurrence in shard order stays, the
result is deterministic; and ingest -> clean -> dedup on the sample keeps its counts straight."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest

from pipeline.clean import run_clean
from pipeline.config import CleanConfig, DedupConfig, load_config
from pipeline.dedup import dedup_key, read_duplicates, run_dedup, text_digest
from pipeline.documents import document_id, iter_documents, make_document, write_documents
from pipeline.ingest import run_ingest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
SHARED = REPO.parent / "shared" / "data"


def squad_contexts(n: int) -> list[str]:
    with (SAMPLE / "squad_contexts.csv").open(encoding="utf-8", newline="") as f:
        contexts = list(dict.fromkeys(row["context"] for row in csv.DictReader(f)))
    return contexts[:n]


def doc(text: str, n: int, source: str = "test") -> dict:
    return make_document(id=document_id("test", f"doc:{n}"), text=text, source=source)


def write_input(docs: list[dict], folder: Path, max_docs: int) -> Path:
    folder.mkdir(parents=True)
    write_documents(docs, folder, max_docs=max_docs)
    return folder


def test_dedup_key_ignores_case_punctuation_and_spacing():
    assert dedup_key("Hello, World!") == dedup_key("hello   world") == "hello world"
    assert dedup_key("«Ça va?»\n\tOui.") == "ça va oui"
    assert text_digest("The Normans.") == text_digest("the  normans")
    assert text_digest("The Normans") != text_digest("The Norman")
    assert len(text_digest("x")) == 16


def test_first_occurrence_in_shard_order_is_kept(tmp_path):
    a, b, c = squad_contexts(3)
    texts = [
        a,  # 0 kept
        b,  # 1 kept
        a,  # 2 exact duplicate of 0
        a.upper(),  # 3 same after lowercasing
        b.replace(",", " ,").replace(".", " . "),  # 4 same once punctuation/spacing go
        c,  # 5 kept
        c.rsplit(" ", 1)[0],  # 6 lacks the last word: kept
        b,  # 7 duplicate of 1, in a later shard
    ]
    docs = [doc(t, i, source="squad" if i % 2 else "wiki") for i, t in enumerate(texts)]
    write_input(docs, tmp_path / "in", max_docs=3)

    manifest = run_dedup(tmp_path / "in", tmp_path / "out", DedupConfig(max_docs_per_shard=2))
    assert manifest["counts"] == {
        "input": 8,
        "kept": 4,
        "duplicates": 4,
        "duplicates_by_source": {"squad": 2, "wiki": 2},
    }
    kept = list(iter_documents(tmp_path / "out"))
    assert [d["id"] for d in kept] == [docs[i]["id"] for i in (0, 1, 5, 6)]
    assert kept == [docs[i] for i in (0, 1, 5, 6)]  # kept documents pass through unchanged
    assert read_duplicates(tmp_path / "out") == [
        {"id": docs[2]["id"], "source": "wiki", "duplicate_of": docs[0]["id"]},
        {"id": docs[3]["id"], "source": "squad", "duplicate_of": docs[0]["id"]},
        {"id": docs[4]["id"], "source": "wiki", "duplicate_of": docs[1]["id"]},
        {"id": docs[7]["id"], "source": "squad", "duplicate_of": docs[1]["id"]},
    ]

    # Deterministic: a second run, with other shard sizes, gives the same documents.
    run_dedup(tmp_path / "in", tmp_path / "again", DedupConfig(max_docs_per_shard=100))
    assert list(iter_documents(tmp_path / "again")) == kept
    assert read_duplicates(tmp_path / "again") == read_duplicates(tmp_path / "out")


def test_no_duplicates_and_empty_input(tmp_path):
    docs = [doc(t, i) for i, t in enumerate(squad_contexts(5))]
    write_input(docs, tmp_path / "in", max_docs=10)
    manifest = run_dedup(tmp_path / "in", tmp_path / "out", DedupConfig())
    assert manifest["counts"]["duplicates"] == 0 and manifest["counts"]["kept"] == 5
    assert read_duplicates(tmp_path / "out") == []

    (tmp_path / "none").mkdir()
    empty = run_dedup(tmp_path / "none", tmp_path / "none-out", DedupConfig())
    assert empty["counts"]["input"] == 0 and read_duplicates(tmp_path / "none-out") == []


def test_sample_counts_add_up_through_ingest_clean_dedup(tmp_path):
    config = load_config(REPO / "configs" / "quickstart.yaml")
    ingested = run_ingest(config.sources, config.base_dir, tmp_path / "ingest", 400)
    cleaned = run_clean(tmp_path / "ingest", tmp_path / "clean", CleanConfig())
    deduped = run_dedup(tmp_path / "clean", tmp_path / "dedup", DedupConfig())

    documents = ingested["counts"]["documents"]
    assert documents == (
        cleaned["counts"]["rejected"] + deduped["counts"]["duplicates"] + deduped["counts"]["kept"]
    )
    assert cleaned["counts"]["input"] == documents
    assert deduped["counts"]["input"] == cleaned["counts"]["kept"]
    # The numbers data/sample/README.md quotes.
    assert (documents, cleaned["counts"]["rejected"]) == (942, 125)
    assert (deduped["counts"]["duplicates"], deduped["counts"]["kept"]) == (642, 175)
    # Every SQuAD context survives exactly once.
    squad_kept = [d for d in iter_documents(tmp_path / "dedup") if d["source"] == "squad"]
    assert sorted(d["text"] for d in squad_kept) == sorted(squad_contexts(1000))


@pytest.mark.skipif(not (SHARED / "news").is_dir(), reason="../shared/data is not here")
def test_bbc_news_duplicate_bodies(tmp_path):
    path = SHARED / "news" / "bbc_news_fulltext_shared.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    docs = [make_document(id=r["id"], text=r["text"], source="bbc") for r in records]
    write_input(docs, tmp_path / "in", max_docs=500)
    manifest = run_dedup(tmp_path / "in", tmp_path / "out", DedupConfig())

    distinct = len({dedup_key(r["text"]) for r in records})
    assert manifest["counts"]["kept"] == distinct
    assert manifest["counts"]["duplicates"] == len(records) - distinct > 0
    text_by_id = {r["id"]: r["text"] for r in records}
    position = {r["id"]: i for i, r in enumerate(records)}
    for row in read_duplicates(tmp_path / "out"):
        assert dedup_key(text_by_id[row["id"]]) == dedup_key(text_by_id[row["duplicate_of"]])
        assert position[row["duplicate_of"]] < position[row["id"]]  # the earlier one is kept
