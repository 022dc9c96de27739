"""Dedup: exact and near duplicates go, the first document in order stays, the result is the
same for any number of workers and shard sizes; MinHash estimates Jaccard similarity; repeated
paragraphs are cut; a later run dedups against an earlier one; and ingest -> clean -> dedup on
the sample keeps its counts straight."""

from __future__ import annotations

import csv
import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from pipeline.clean import run_clean
from pipeline.config import CleanConfig, DedupConfig, load_config
from pipeline.dedup import (
    MinHasher,
    component_arrays,
    component_roots,
    dedup_key,
    jaccard,
    lsh_probability,
    read_duplicates,
    run_dedup,
    shingle_words,
    text_digest,
)
from pipeline.documents import document_id, iter_documents, make_document, write_documents
from pipeline.ingest import run_ingest
from pipeline.parallel import ProcessExecutor

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
SHARED = REPO.parent / "shared" / "data"
BBC = SHARED / "news" / "bbc_news_fulltext_shared.jsonl.gz"


def squad_contexts(n: int) -> list[str]:
    with (SAMPLE / "squad_contexts.csv").open(encoding="utf-8", newline="") as f:
        contexts = list(dict.fromkeys(row["context"] for row in csv.DictReader(f)))
    return contexts[:n]


def wikitext_articles(n: int) -> list[str]:
    with gzip.open(SAMPLE / "wikitext2_test_articles.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for _, line in zip(range(n), f, strict=False)]


def doc(text: str, n: int, source: str = "test") -> dict:
    return make_document(id=document_id("test", f"doc:{n}"), text=text, source=source)


def write_input(docs: list[dict], folder: Path, max_docs: int) -> Path:
    folder.mkdir(parents=True)
    write_documents(docs, folder, max_docs=max_docs)
    return folder


def test_dedup_key_ignores_case_punctuation_and_spacing():
    assert dedup_key("Hello, World!") == dedup_key("hello   world") == "hello world"
    assert dedup_key("«Ça va?»\n\tOui.") == "ça va oui"
    assert dedup_key("a+b=c $5") == "a+b=c $5"  # symbols are not punctuation
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
        c.rsplit(" ", 1)[0],  # 6 lacks the last word: a near duplicate, not an exact one
        b,  # 7 duplicate of 1, in a later shard
    ]
    docs = [doc(t, i, source="squad" if i % 2 else "wiki") for i, t in enumerate(texts)]
    write_input(docs, tmp_path / "in", max_docs=3)

    exact = DedupConfig(method="exact", max_docs_per_shard=2)
    manifest = run_dedup(tmp_path / "in", tmp_path / "out", exact)
    assert manifest["counts"] == {
        "input": 8,
        "kept": 4,
        "duplicates": 4,
        "duplicates_by_kind": {"exact": 4, "near": 0, "spans": 0},
        "duplicates_by_source": {"squad": 2, "wiki": 2},
    }
    kept = list(iter_documents(tmp_path / "out"))
    assert kept == [docs[i] for i in (0, 1, 5, 6)]  # kept documents pass through unchanged
    assert read_duplicates(tmp_path / "out") == [
        {"id": docs[2]["id"], "source": "wiki", "duplicate_of": docs[0]["id"], "kind": "exact"},
        {"id": docs[3]["id"], "source": "squad", "duplicate_of": docs[0]["id"], "kind": "exact"},
        {"id": docs[4]["id"], "source": "wiki", "duplicate_of": docs[1]["id"], "kind": "exact"},
        {"id": docs[7]["id"], "source": "squad", "duplicate_of": docs[1]["id"], "kind": "exact"},
    ]

    # The default adds MinHash near-dup detection: the context without its last word goes too.
    near = run_dedup(tmp_path / "in", tmp_path / "near", DedupConfig(max_docs_per_shard=100))
    assert near["counts"]["duplicates_by_kind"] == {"exact": 4, "near": 1, "spans": 0}
    assert list(iter_documents(tmp_path / "near")) == [docs[i] for i in (0, 1, 5)]
    assert read_duplicates(tmp_path / "near")[3] == {
        "id": docs[6]["id"],
        "source": "wiki",
        "duplicate_of": docs[5]["id"],
        "kind": "near",
    }
    assert near["near_duplicates"]["examples"][0]["duplicate_of"] == docs[5]["id"]


def test_minhash_estimates_jaccard_and_lsh_follows_its_curve():
    articles = wikitext_articles(12)
    hasher = MinHasher()  # FineWeb: 5-grams, 14 bands x 8 rows = 112 hash functions
    rng = random.Random(0)
    errors = []
    for text in articles:
        words = text.split()
        cut = rng.randint(0, len(words) // 2)
        edited = " ".join(words[: len(words) - cut])
        signatures, has = hasher.signatures([text, edited])
        assert has.all()
        errors.append(np.mean(signatures[0] == signatures[1]) - jaccard(text, edited))
    # The estimate of a Jaccard similarity s has standard deviation sqrt(s(1-s)/112) <= 0.047.
    assert abs(np.mean(errors)) < 0.03 and np.std(errors) < 0.06
    assert lsh_probability(0.8, 14, 8) == pytest.approx(0.924, abs=1e-3)
    assert lsh_probability(0.5, 14, 8) < 0.06
    keys, has = hasher.text_band_keys([articles[0], articles[0] + " The end.", articles[1], ""])
    assert keys.shape == (4, 14) and has.tolist() == [True, True, True, False]
    assert (keys[0] == keys[1]).sum() >= 1 and (keys[0] == keys[2]).sum() == 0
    assert shingle_words("It's 2005, OK?") == ["it", "s", "0000", "ok"]
    # Same seed, same keys in another process: the hash functions are no Python `hash`.
    assert MinHasher(seed=1).a.tolist() == hasher.a.tolist()
    assert MinHasher(seed=2).a.tolist() != hasher.a.tolist()


def test_components_keep_the_smallest_document_whatever_the_pair_order():
    edges = np.array([[5, 3], [3, 9], [10, 11], [11, 2], [9, 4], [7, 7]])
    expected = {2: 2, 10: 2, 11: 2, 3: 3, 4: 3, 5: 3, 9: 3, 7: 7}
    assert component_roots(edges) == expected
    assert component_roots(edges[::-1]) == expected
    assert component_roots(np.empty((0, 2), dtype=np.int64)) == {}
    nodes, kept = component_arrays(edges)
    assert dict(zip(nodes.tolist(), kept.tolist(), strict=True)) == expected
    assert nodes.tolist() == sorted(expected)
    assert [len(a) for a in component_arrays(np.empty((0, 2), dtype=np.int64))] == [0, 0]


def test_component_arrays_agree_with_the_union_find_on_random_graphs():
    """The numpy label propagation the stage uses against the dict union-find: long chains
    (many propagation rounds), stars, self-pairs and repeated pairs, in any order."""
    rng = np.random.default_rng(7)
    chain = np.stack([np.arange(0, 400), np.arange(1, 401)], axis=1)[rng.permutation(400)]
    graphs = [chain, chain[:, ::-1], np.array([[9, 9], [9, 9], [4, 9], [100, 4]])]
    for _ in range(30):
        size = int(rng.integers(1, 3000))
        graphs.append(rng.integers(0, int(rng.integers(2, 5000)), size=(size, 2)))
    for edges in graphs:
        nodes, kept = component_arrays(edges)
        assert dict(zip(nodes.tolist(), kept.tolist(), strict=True)) == component_roots(edges)


def near_duplicate_corpus() -> tuple[list[dict], set[int]]:
    """Real articles, and reprints of some of them with realistic edits (a new headline line,
    a byline, a trimmed last paragraph); returns the documents and the reprints' positions."""
    articles = wikitext_articles(40)
    docs = [doc(text, i, "wiki") for i, text in enumerate(articles)]
    reprints = set()
    for i in range(0, 40, 4):
        paragraphs = articles[i].split("\n\n")
        edited = "\n\n".join(["REPRINT: " + paragraphs[0][:60], *paragraphs[:-1]])
        edited += "\n\nBy a staff reporter"
        reprints.add(len(docs))
        docs.append(doc(edited, 100 + i, "reprint"))
    return docs, reprints


def test_near_duplicates_same_for_any_workers_and_shard_sizes(tmp_path):
    docs, reprints = near_duplicate_corpus()
    write_input(docs, tmp_path / "in", max_docs=7)  # 8 shards, 8 units
    first = run_dedup(tmp_path / "in", tmp_path / "one", DedupConfig())
    removed = {d["id"] for d in read_duplicates(tmp_path / "one")}
    assert removed >= {docs[i]["id"] for i in reprints}  # every reprint found
    assert first["counts"]["duplicates_by_kind"]["near"] >= len(reprints)
    assert first["counts"]["input"] == first["counts"]["kept"] + first["counts"]["duplicates"]

    with ProcessExecutor(2) as executor:
        second = run_dedup(tmp_path / "in", tmp_path / "two", DedupConfig(), executor)
    assert second["counts"] == first["counts"]
    assert list(iter_documents(tmp_path / "two")) == list(iter_documents(tmp_path / "one"))
    assert read_duplicates(tmp_path / "two") == read_duplicates(tmp_path / "one")

    (tmp_path / "in").rename(tmp_path / "in7")
    write_input(docs, tmp_path / "in", max_docs=1000)  # one shard
    run_dedup(tmp_path / "in", tmp_path / "three", DedupConfig())
    assert list(iter_documents(tmp_path / "three")) == list(iter_documents(tmp_path / "one"))
    assert read_duplicates(tmp_path / "three") == read_duplicates(tmp_path / "one")


def test_repeated_paragraphs_are_cut_after_their_first_occurrence(tmp_path):
    contexts = squad_contexts(4)
    boilerplate = "Follow us on social media and sign up for our daily newsletter."
    texts = [f"{c}\n\n{boilerplate}" for c in contexts]
    texts.append(f"{boilerplate}\n\nShort teaser.")  # little left once the boilerplate goes
    write_input([doc(t, i) for i, t in enumerate(texts)], tmp_path / "in", max_docs=2)
    cfg = DedupConfig(repeated_spans="paragraphs", span_min_doc_words=20)
    manifest = run_dedup(tmp_path / "in", tmp_path / "out", cfg)
    kept = [d["text"] for d in iter_documents(tmp_path / "out")]
    assert kept == [texts[0]] + contexts[1:4]
    assert manifest["spans"] == {
        "unit": "paragraphs",
        "removed": 4,
        "chars_removed": 3 * (len(boilerplate) + 2) + len(boilerplate) + 2,
    }
    assert manifest["counts"]["duplicates_by_kind"] == {"exact": 0, "near": 0, "spans": 1}
    assert read_duplicates(tmp_path / "out")[0]["kind"] == "spans"

    lines = run_dedup(
        tmp_path / "in", tmp_path / "lines", cfg.model_copy(update={"repeated_spans": "lines"})
    )
    assert lines["spans"]["removed"] == 4


def test_incremental_run_drops_what_an_earlier_run_holds(tmp_path):
    articles = wikitext_articles(30)
    monday = [doc(t, i, "monday") for i, t in enumerate(articles[:20])]
    write_input(monday, tmp_path / "monday", max_docs=8)
    run_dedup(tmp_path / "monday", tmp_path / "dedup-monday", DedupConfig())

    # Tuesday's crawl: 5 articles seen on Monday (one lightly edited), 10 new ones.
    tuesday = [doc(t, 100 + i, "tuesday") for i, t in enumerate(articles[15:30])]
    tuesday[0]["text"] = tuesday[0]["text"] + "\n\nUpdated on Tuesday."
    write_input(tuesday, tmp_path / "tuesday", max_docs=8)
    cfg = DedupConfig(previous=str(tmp_path / "dedup-monday"))
    manifest = run_dedup(tmp_path / "tuesday", tmp_path / "dedup-tuesday", cfg)
    assert manifest["counts"]["previous_documents"] == 20
    assert manifest["counts"]["duplicates_of_previous"] == 5
    kept = list(iter_documents(tmp_path / "dedup-tuesday"))
    assert [d["text"] for d in kept] == articles[20:30]
    dropped = read_duplicates(tmp_path / "dedup-tuesday")
    assert dropped[0]["duplicate_of"] == monday[15]["id"] and dropped[0]["kind"] == "near"

    # Wednesday dedups against Tuesday's output, which carries Monday's signatures too.
    write_input([doc(articles[3], 999, "wednesday")], tmp_path / "wednesday", max_docs=8)
    cfg = DedupConfig(previous=str(tmp_path / "dedup-tuesday"))
    wednesday = run_dedup(tmp_path / "wednesday", tmp_path / "dedup-wednesday", cfg)
    assert wednesday["counts"]["previous_documents"] == 35
    assert wednesday["counts"]["kept"] == 0
    assert read_duplicates(tmp_path / "dedup-wednesday")[0]["duplicate_of"] == monday[3]["id"]

    with pytest.raises(ValueError, match="must match"):
        run_dedup(tmp_path / "wednesday", tmp_path / "x", cfg.model_copy(update={"num_bands": 20}))
    with pytest.raises(ValueError, match="not a dedup output"):
        run_dedup(tmp_path / "wednesday", tmp_path / "y", DedupConfig(previous=str(tmp_path)))


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
    ingested = run_ingest(config.sources, config.base_dir, tmp_path / "ingest", config.ingest)
    cleaned = run_clean(tmp_path / "ingest", tmp_path / "clean", CleanConfig())
    deduped = run_dedup(tmp_path / "clean", tmp_path / "dedup", DedupConfig())

    documents = ingested["counts"]["documents"]
    assert documents == (
        cleaned["counts"]["rejected"] + deduped["counts"]["duplicates"] + deduped["counts"]["kept"]
    )
    assert cleaned["counts"]["input"] == documents
    assert deduped["counts"]["input"] == cleaned["counts"]["kept"]
    # The numbers data/sample/README.md quotes, under the default (FineWeb) rules.
    assert (documents, cleaned["counts"]["rejected"]) == (1411, 624)
    assert (deduped["counts"]["duplicates"], deduped["counts"]["kept"]) == (249, 538)
    # Every SQuAD context that passes the rules survives exactly once.
    squad_kept = [d["text"] for d in iter_documents(tmp_path / "dedup") if d["source"] == "squad"]
    assert len(squad_kept) == len(set(squad_kept)) > 30


@pytest.mark.skipif(not BBC.is_file(), reason="../shared/data is not here")
def test_bbc_news_duplicate_bodies(tmp_path):
    with gzip.open(BBC, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    docs = [make_document(id=r["id"], text=r["text"], source="bbc") for r in records]
    write_input(docs, tmp_path / "in", max_docs=500)
    manifest = run_dedup(tmp_path / "in", tmp_path / "out", DedupConfig())

    distinct = len({dedup_key(r["text"]) for r in records})
    assert manifest["counts"]["duplicates_by_kind"]["exact"] == len(records) - distinct > 0
    # MinHash finds near copies beside them: re-sent articles with a changed sentence, and one
    # follow-up story that repeats half of the first (Jaccard 0.47, a candidate by chance).
    assert manifest["counts"]["duplicates_by_kind"]["near"] > 0
    text_by_id = {r["id"]: r["text"] for r in records}
    position = {r["id"]: i for i, r in enumerate(records)}
    for row in read_duplicates(tmp_path / "out"):
        removed, kept = text_by_id[row["id"]], text_by_id[row["duplicate_of"]]
        if row["kind"] == "exact":
            assert dedup_key(removed) == dedup_key(kept)
        else:
            assert jaccard(removed, kept) > 0.45
        assert position[row["duplicate_of"]] < position[row["id"]]  # the earlier one is kept


def test_a_bare_yaml_off_switches_span_dedup_off():
    config = load_config(REPO / "configs" / "quickstart.yaml", ["dedup.repeated_spans=off"])
    assert config.dedup.repeated_spans == "off"  # YAML reads `off` as false
