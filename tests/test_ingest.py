"""Ingest: every source type on real sample data, field mapping, stable ids, and bad input that
is counted and quarantined instead of crashing the stage or vanishing."""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import TypeAdapter

from pipeline.config import IngestConfig, SourceConfig
from pipeline.documents import iter_documents, shard_paths
from pipeline.ingest import run_ingest, source_input_fingerprint
from pipeline.quarantine import read_quarantine

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
SHARED = REPO.parent / "shared" / "data"

SAMPLE_SOURCES = [
    {
        "type": "jsonl",
        "name": "wikitext2",
        "path": "data/sample/wikitext2_test_articles.jsonl.gz",
        "fields": {"id": "id", "title": "title"},
    },
    {"type": "text", "name": "botchan", "path": "data/sample/botchan.txt", "split": "paragraphs"},
    {
        "type": "csv",
        "name": "squad",
        "path": "data/sample/squad_contexts.csv",
        "text_field": "context",
        "fields": {"id": "id", "title": "title"},
    },
    {
        "type": "jsonl",
        "name": "ftfy",
        "path": "data/sample/ftfy_text_snippets.jsonl",
        "fields": {"title": "label"},
    },
]


def sources(*raw: dict) -> list:
    adapter = TypeAdapter(SourceConfig)
    return [adapter.validate_python(item) for item in raw]


def ingest(tmp_path: Path, raw_sources: list[dict], base_dir: Path, out: str = "out", **kw):
    settings = IngestConfig(max_docs_per_shard=kw.get("max_docs_per_shard", 1000))
    manifest = run_ingest(sources(*raw_sources), str(base_dir), tmp_path / out, settings)
    return manifest, list(iter_documents(tmp_path / out))


def wikitext_articles(n: int) -> list[dict]:
    with gzip.open(SAMPLE / "wikitext2_test_articles.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


# ---------------------------------------------------------------------------- sample corpus


def test_sample_sources_become_documents(tmp_path):
    manifest, docs = ingest(tmp_path, SAMPLE_SOURCES, REPO, max_docs_per_shard=300)
    counts = manifest["counts"]
    assert {name: c["documents"] for name, c in counts["by_source"].items()} == {
        "wikitext2": 60,
        "botchan": 12,
        "squad": 742,
        "ftfy": 128,
    }
    assert counts["documents"] == len(docs) == 942
    assert counts["quarantined"] == 0 and counts["sources_without_files"] == []
    assert len(shard_paths(tmp_path / "out")) == 4  # 942 documents, 300 a shard
    assert len({d["id"] for d in docs}) == len(docs)
    assert manifest["stats"]["files"] == 4
    assert manifest["stats"]["chars"] == sum(len(d["text"]) for d in docs)
    assert [e["source"] for e in manifest["examples"]] == ["wikitext2", "botchan", "squad", "ftfy"]
    assert {d["lang"] for d in docs if d["source"] != "ftfy"} == {"en"}  # detected

    by_source = {}
    for doc in docs:
        by_source.setdefault(doc["source"], []).append(doc)
    first_article = by_source["wikitext2"][0]
    assert first_article["title"] == "Robert Boulter"
    assert first_article["text"].startswith("Robert Boulter is an English film, television")
    assert json.loads(first_article["meta"])["_locator"].endswith("articles.jsonl.gz:1")

    chapter_one = by_source["botchan"][1]
    assert chapter_one["text"].startswith("CHAPTER I\nBecause of an hereditary recklessness")

    squad = by_source["squad"][0]
    assert squad["title"] == "Normans"
    meta = json.loads(squad["meta"])
    assert meta["question"] == "In what country is Normandy located?"  # unmapped -> meta
    assert "context" not in meta and "id" not in meta  # used fields are not repeated

    snippet = by_source["ftfy"][0]
    assert snippet["title"] == "Low-codepoint emoji" and json.loads(snippet["meta"])["set"]


def test_ids_are_stable_across_runs_and_namespaced(tmp_path):
    _, first = ingest(tmp_path, SAMPLE_SOURCES, REPO, out="a")
    _, second = ingest(tmp_path, SAMPLE_SOURCES, REPO, out="b", max_docs_per_shard=50)
    assert [d["id"] for d in first] == [d["id"] for d in second]
    assert first == second

    # The same user ids under another source name are other documents.
    renamed = [dict(SAMPLE_SOURCES[0], name="wikitext2-copy")]
    _, copy = ingest(tmp_path, renamed, REPO, out="c")
    assert [d["text"] for d in copy] == [d["text"] for d in first[:60]]
    assert not {d["id"] for d in copy} & {d["id"] for d in first}


def test_ids_do_not_depend_on_where_the_checkout_lives(tmp_path):
    elsewhere = tmp_path / "checkout"
    shutil.copytree(SAMPLE, elsewhere / "data" / "sample")
    botchan = [SAMPLE_SOURCES[1]]
    _, here = ingest(tmp_path, botchan, REPO, out="here")
    _, there = ingest(tmp_path, botchan, elsewhere, out="there")
    assert [d["id"] for d in here] == [d["id"] for d in there]


# ----------------------------------------------------------------------------- source types


def test_parquet_source_with_field_mapping(tmp_path):
    articles = wikitext_articles(5)
    table = pa.table(
        {
            "headline": [a["title"] for a in articles],
            "body": [a["text"] for a in articles],
            "link": [
                f"https://en.wikipedia.org/wiki/{a['title'].replace(' ', '_')}" for a in articles
            ],
            "year": [2016, 2016, None, 2016, 2016],
            "words": [len(a["text"].split()) for a in articles],
        }
    )
    pq.write_table(table, tmp_path / "articles.parquet")
    raw = {
        "type": "parquet",
        "path": "articles.parquet",
        "text_field": "body",
        "fields": {"title": "headline", "url": "link", "published": "year"},
    }
    manifest, docs = ingest(tmp_path, [raw], tmp_path)
    assert manifest["counts"]["by_source"]["parquet:articles.parquet"]["documents"] == 5
    assert manifest["counts"]["by_source"]["parquet:articles.parquet"][
        "documents_missing_mapped_field"
    ] == {"published": 1}
    assert [d["title"] for d in docs] == [a["title"] for a in articles]
    assert [d["text"] for d in docs] == [a["text"] for a in articles]
    assert docs[0]["url"] == "https://en.wikipedia.org/wiki/Robert_Boulter"
    assert docs[0]["published"] == "2016" and docs[2]["published"] is None
    assert docs[0]["source"] == "parquet:articles.parquet"
    meta = json.loads(docs[0]["meta"])
    assert meta == {
        "words": 897,
        "_locator": "articles.parquet#0",
        "lang_score": meta["lang_score"],
    }
    assert docs[0]["lang"] == "en" and 0.5 < meta["lang_score"] <= 1

    # The url is part of the id: a moved page is another document.
    moved = table.set_column(2, "link", pa.array([f"https://example.org/{i}" for i in range(5)]))
    pq.write_table(moved, tmp_path / "articles.parquet")
    _, moved_docs = ingest(tmp_path, [raw], tmp_path, out="moved")
    assert not {d["id"] for d in moved_docs} & {d["id"] for d in docs}


def test_gzipped_tsv_with_delimiter(tmp_path):
    with (SAMPLE / "squad_contexts.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))[:40]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), delimiter="\t")
    writer.writeheader()
    writer.writerows(rows)
    (tmp_path / "squad.tsv.gz").write_bytes(gzip.compress(buffer.getvalue().encode()))
    raw = {"type": "csv", "path": "squad.tsv.gz", "delimiter": "\t", "text_field": "context"}
    manifest, docs = ingest(tmp_path, [raw], tmp_path)
    assert manifest["counts"]["documents"] == 40
    assert [d["text"] for d in docs] == [r["context"] for r in rows]
    assert json.loads(docs[0]["meta"])["question"] == rows[0]["question"]


def test_text_folder_and_glob(tmp_path):
    chapters = (SAMPLE / "botchan.txt").read_text(encoding="utf-8").split("\n\n")
    folder = tmp_path / "novel"
    (folder / "part2").mkdir(parents=True)
    (folder / "a.txt").write_text(chapters[1], encoding="utf-8")
    (folder / "part2" / "b.txt.gz").write_bytes(gzip.compress(chapters[2].encode()))
    (folder / "notes.rst").write_text("not a text-source file", encoding="utf-8")
    (folder / "_draft.txt").write_text("underscore files are skipped", encoding="utf-8")

    manifest, docs = ingest(tmp_path, [{"type": "text", "path": "novel"}], tmp_path)
    assert [d["text"] for d in docs] == [chapters[1], chapters[2]]
    assert [json.loads(d["meta"])["_locator"] for d in docs] == [
        "novel/a.txt",
        "novel/part2/b.txt.gz",
    ]
    assert manifest["stats"]["files"] == 2

    _, globbed = ingest(tmp_path, [{"type": "text", "path": "novel/**/*.gz"}], tmp_path, out="g")
    assert [d["text"] for d in globbed] == [chapters[2]]


# ------------------------------------------------------------------------------- bad inputs


def test_bad_inputs_are_counted_and_quarantined(tmp_path):
    good = wikitext_articles(3)
    lines = [
        json.dumps({"text": good[0]["text"], "title": good[0]["title"]}).encode(),
        b'{"text": "an unterminated string',
        json.dumps({"title": "no text field"}).encode(),
        json.dumps({"text": "   \n "}).encode(),
        json.dumps({"text": 42}).encode(),
        b'["a", "list", "not", "an", "object"]',
        # Invalid UTF-8 inside a good record: repaired and kept.
        b'{"text": "Caf\xe9 au lait, ' + good[1]["text"][:200].encode() + b'"}',
        b"",
    ]
    (tmp_path / "mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    full = "".join(json.dumps({"text": a["text"]}) + "\n" for a in wikitext_articles(20))
    compressed = gzip.compress(full.encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(compressed[: len(compressed) // 2])
    (tmp_path / "rows.csv").write_text(
        'text,title\n"A fine row of text that stays.",ok\n"a row",with,too,many,fields\n',
        encoding="utf-8",
    )
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not really parquet")

    raw_sources = [
        {"type": "jsonl", "name": "jsonl-files", "path": "*.jsonl*"},
        {"type": "csv", "name": "csv", "path": "rows.csv"},
        {"type": "parquet", "name": "parquet", "path": "broken.parquet"},
        {"type": "jsonl", "name": "missing", "path": "does/not/exist.jsonl"},
        {"type": "jsonl", "name": "nothing", "path": "none-*.jsonl"},
    ]
    manifest, docs = ingest(tmp_path, raw_sources, tmp_path)
    counts = manifest["counts"]
    refused = counts["quarantined_by_reason"]
    assert refused == {
        "empty_file": 1,
        "empty_text": 1,
        "malformed_csv_row": 1,
        "malformed_json": 2,
        "missing_path": 1,
        "missing_text": 1,
        "no_files": 1,
        "non_string_text": 1,
        "truncated_gzip": 1,
        "unreadable_file": 1,
    }
    assert counts["quarantined"] == sum(refused.values()) == 11
    assert counts["repaired_invalid_utf8"] == 1
    assert counts["sources_without_files"] == ["missing", "nothing"]
    assert counts["by_source"]["missing"]["files"] == 0

    # What was readable survived: 2 good mixed lines, the csv row, the lines before the cut.
    from_cut = [d for d in docs if "cut.jsonl.gz" in json.loads(d["meta"])["_locator"]]
    assert 0 < len(from_cut) < 20
    assert [d["text"] for d in from_cut] == [a["text"] for a in wikitext_articles(len(from_cut))]
    assert counts["documents"] == len(docs) == 2 + 1 + len(from_cut)
    repaired = [d for d in docs if json.loads(d["meta"]).get("_invalid_utf8")]
    assert len(repaired) == 1 and repaired[0]["text"].startswith("Caf\ufffd au lait")

    entries = read_quarantine(tmp_path / "out")
    by_reason: dict[str, dict] = {}
    for entry in entries:
        by_reason.setdefault(entry["reason"], entry)  # the first of each reason
    assert set(by_reason) == set(refused) | {"invalid_utf8"}
    assert by_reason["malformed_json"]["locator"] == "mixed.jsonl:2"
    assert by_reason["malformed_json"]["record"] == '{"text": "an unterminated string\n'
    assert by_reason["missing_text"]["locator"] == "mixed.jsonl:3"
    assert "no text field" in by_reason["missing_text"]["record"]
    assert by_reason["non_string_text"]["detail"] == "'text' is a int, not a string"
    assert by_reason["empty_file"]["locator"] == "empty.jsonl"
    assert by_reason["truncated_gzip"]["locator"].startswith("cut.jsonl.gz after cut.jsonl.gz:")
    assert by_reason["malformed_csv_row"]["locator"] == "rows.csv#2"
    assert by_reason["missing_path"]["source"] == "missing"
    assert by_reason["invalid_utf8"]["detail"].endswith(repaired[0]["id"])
    assert all(e["source"] and e["locator"] and e["detail"] for e in entries)


def test_invalid_utf8_in_text_and_csv_sources_is_repaired(tmp_path):
    # UTF-8 files (their other non-ASCII bytes are UTF-8) with a few invalid bytes: each bad
    # line is decoded with U+FFFD and its document kept. (A file in another encoding is decoded
    # in that encoding instead: tests/hostile.)
    (tmp_path / "t.txt").write_bytes(
        "First paragraph, fine — yes.\n\n".encode() + b"Second \xff\xfe one.\nMore.\n"
    )
    (tmp_path / "c.csv").write_bytes("text\nok row — yes\n".encode() + b'"bad \x80 row"\n')
    manifest, docs = ingest(
        tmp_path,
        [
            {"type": "text", "path": "t.txt", "split": "paragraphs"},
            {"type": "csv", "path": "c.csv"},
        ],
        tmp_path,
    )
    assert [d["text"] for d in docs] == [
        "First paragraph, fine — yes.",
        "Second \ufffd\ufffd one.\nMore.",
        "ok row — yes",
        "bad \ufffd row",
    ]
    assert manifest["counts"]["repaired_invalid_utf8"] == 2
    assert manifest["counts"]["quarantined"] == 0
    flagged = [json.loads(d["meta"]).get("_invalid_utf8", False) for d in docs]
    assert flagged == [False, True, False, True]


def test_a_record_read_twice_is_refused_as_a_duplicate_id(tmp_path):
    articles = wikitext_articles(4)
    (tmp_path / "a.jsonl").write_text(
        "".join(json.dumps({"text": a["text"]}) + "\n" for a in articles), encoding="utf-8"
    )
    twice = [{"type": "jsonl", "path": "a.jsonl"}, {"type": "jsonl", "path": "./a.jsonl"}]
    manifest, docs = ingest(tmp_path, twice, tmp_path)
    assert manifest["counts"]["documents"] == len(docs) == 4
    assert manifest["counts"]["quarantined_by_reason"] == {"duplicate_id": 4}


def test_a_repeated_id_keeps_its_first_reading_across_units_and_shards(tmp_path):
    """The merge's id check (numbers sorted once, not a set): repeats within a shard, across
    shards and across units are flagged, the first reading never is."""
    from pipeline.documents import document_id, make_document, write_documents
    from pipeline.ingest.stage import _repeated_ids

    ids = [document_id("jsonl", f"a.jsonl:{n}") for n in range(5)]
    order = [[ids[0], ids[1], ids[0]], [ids[2], ids[1]], [ids[3], ids[4], ids[3], ids[2]]]
    units = []
    for number, unit_ids in enumerate(order):
        unit = tmp_path / f"{number:05d}"
        docs = [make_document(id=i, text="t", source="s") for i in unit_ids]
        write_documents(docs, unit, max_docs=2)  # shards of 2: repeats cross shards too
        units.append(unit)
    assert len(shard_paths(units[2])) == 2
    flags = _repeated_ids(units).tolist()
    assert flags == [False, False, True, False, True, False, False, True, True]
    assert _repeated_ids([]).tolist() == []


# ------------------------------------------------------------------------------ fingerprint


def test_input_fingerprint_follows_config_and_contents(tmp_path):
    (tmp_path / "data").mkdir()
    shutil.copy(SAMPLE / "ftfy_text_snippets.jsonl", tmp_path / "data" / "a.jsonl")
    base = sources({"type": "jsonl", "path": "data"}, {"type": "text", "path": "missing.txt"})
    first = source_input_fingerprint(base, tmp_path)
    assert first == source_input_fingerprint(base, tmp_path)
    assert len(first) == 2 and len(set(first)) == 2

    relabelled = sources({"type": "jsonl", "path": "data", "fields": {"title": "label"}})
    assert source_input_fingerprint(relabelled, tmp_path)[0] != first[0]

    with (tmp_path / "data" / "a.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps({"text": "one more record"}) + "\n")
    edited = source_input_fingerprint(base, tmp_path)
    assert edited[0] != first[0] and edited[1] == first[1]

    shutil.copytree(tmp_path / "data", tmp_path / "moved" / "data")
    assert source_input_fingerprint(base, tmp_path / "moved")[0] == edited[0]


# ------------------------------------------------------------------------------ shared data


@pytest.mark.skipif(not (SHARED / "news").is_dir(), reason="../shared/data is not here")
def test_shared_news_sources(tmp_path):
    raw = [
        {
            "type": "jsonl",
            "name": "bbc",
            "path": str(SHARED / "news" / "bbc_news_fulltext_shared.jsonl.gz"),
            "fields": {"id": "id", "title": "title", "published": "published"},
        },
        {"type": "jsonl", "name": "ag_news", "path": str(SHARED / "news" / "ag_news_*.jsonl.gz")},
    ]
    manifest, docs = ingest(tmp_path, raw, tmp_path, max_docs_per_shard=5000)
    counts = manifest["counts"]["by_source"]
    assert counts["bbc"]["documents"] == 1767 and counts["bbc"]["files"] == 1
    assert counts["ag_news"]["documents"] == 4505 + 10001 and counts["ag_news"]["files"] == 2
    assert manifest["counts"]["quarantined"] == 0
    bbc = next(d for d in docs if d["source"] == "bbc")
    assert bbc["title"] == "Ad sales boost Time Warner profit"
    assert json.loads(bbc["meta"])["category"] == "business"
    assert docs[0]["id"] != docs[1]["id"] and len({d["id"] for d in docs}) == len(docs)


def test_unicode_line_separators_inside_records_do_not_split_them(tmp_path):
    # Real ftfy snippets hold U+0085 and U+2028; written unescaped they must stay one record
    # each (JSONL lines end at \n only), and a quoted CSV field may span lines.
    snippets = [
        json.loads(line)
        for line in (SAMPLE / "ftfy_text_snippets.jsonl").read_text(encoding="ascii").splitlines()
    ]
    tricky = [s for s in snippets if any(c in s["text"] for c in "\x85\u2028\u2029")]
    assert tricky
    (tmp_path / "raw.jsonl").write_text(
        "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in tricky), encoding="utf-8"
    )
    (tmp_path / "multi.csv").write_text(
        'text,n\n"line one\nline two\u2028still two",1\nplain,2\n', encoding="utf-8"
    )
    manifest, docs = ingest(
        tmp_path,
        [{"type": "jsonl", "path": "raw.jsonl"}, {"type": "csv", "path": "multi.csv"}],
        tmp_path,
    )
    assert manifest["counts"]["quarantined"] == 0
    assert [d["text"] for d in docs] == [s["text"] for s in tricky] + [
        "line one\nline two\u2028still two",
        "plain",
    ]
    assert [json.loads(d["meta"])["_locator"] for d in docs[-2:]] == ["multi.csv#1", "multi.csv#2"]
