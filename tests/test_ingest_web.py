"""Ingest of web and dataset sources: WARC/ARC, saved HTML, RSS/Atom/JSON feeds (joined with
their pages), Hugging Face datasets; every bad input of the issue counted and quarantined; the
same output for 1 and 2 workers; language identification."""

from __future__ import annotations

import gzip
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydantic import TypeAdapter

from pipeline.config import IngestConfig, SourceConfig
from pipeline.documents import iter_documents
from pipeline.ingest import run_ingest
from pipeline.parallel import ProcessExecutor, SerialExecutor
from pipeline.quarantine import read_quarantine

REPO = Path(__file__).resolve().parents[1]
WEB_SAMPLE = REPO / "data" / "sample" / "web"
SHARED = REPO.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not here")


def ingest(tmp_path: Path, raw: list[dict], out: str = "out", executor=None, **settings):
    adapter = TypeAdapter(SourceConfig)
    config = IngestConfig(**{"max_docs_per_shard": 1000, **settings})
    manifest = run_ingest(
        [adapter.validate_python(r) for r in raw], str(tmp_path), tmp_path / out, config, executor
    )
    return manifest, list(iter_documents(tmp_path / out))


def meta(doc: dict) -> dict:
    return json.loads(doc["meta"])


# ------------------------------------------------------------------------------------ WARC


def test_warc_response_records_become_documents(tmp_path):
    raw = [
        {"type": "warc", "name": "gz", "path": str(WEB_SAMPLE / "example.warc.gz")},
        {"type": "warc", "name": "chunked", "path": str(WEB_SAMPLE / "*chunked.warc")},
    ]
    manifest, docs = ingest(tmp_path, raw)
    by_source = manifest["counts"]["by_source"]
    # example.warc.gz: one response (example.com) and a revisit; the chunked file: iana.org.
    assert by_source["gz"]["documents"] == 1 and by_source["chunked"]["documents"] == 1
    assert by_source["gz"]["skipped_records"] == {
        "record_type:request": 2,
        "record_type:revisit": 1,
        "record_type:warcinfo": 2,
    }
    example, iana = docs
    assert example["url"] == "http://example.com/" and example["title"] == "Example Domain"
    assert "This domain is established to be used for illustrative examples" in example["text"]
    assert example["lang"] == "en" and meta(example)["warc_date"] == "2017-03-06T04:02:06Z"
    assert meta(example)["_locator"].endswith("example.warc.gz@1197")
    assert iana["url"].startswith("http://www.iana.org/")  # chunked transfer-encoding decoded
    assert "Management of the DNS Root Zone" in iana["text"]

    _, again = ingest(tmp_path, raw, out="again")
    assert [d["id"] for d in again] == [d["id"] for d in docs]  # stable ids


@needs_shared
def test_common_crawl_warcs_arc_and_fsspec_urls(tmp_path):
    warc = SHARED / "warc"
    raw = [
        {
            "type": "warc",
            "name": "cc",
            "path": str(warc / "cc-main-2020-34_excerpt_shared.warc.gz"),
        },
        {"type": "warc", "name": "dolma", "path": str(warc / "dolma_sample-0000.warc.gz")},
        {"type": "warc", "name": "arc", "path": str(warc / "warcio_examples" / "example.arc.gz")},
        {"type": "warc", "name": "url", "path": (warc / "cc_whirlwind").as_uri() + "/*.warc.gz"},
    ]
    manifest, docs = ingest(tmp_path, raw)
    counts = manifest["counts"]["by_source"]
    assert counts["cc"]["documents"] == 8 and counts["cc"]["skipped_records"]["record_type:request"]
    assert counts["dolma"]["documents"] > 0 and counts["arc"]["documents"] == 1
    assert counts["url"]["documents"] == 1 and counts["url"]["files"] == 1
    assert manifest["counts"]["quarantined"] == 0
    cc_langs = {d["lang"] for d in docs if d["source"] == "cc"}
    assert {"zh", "nl", "de"} <= cc_langs  # a multilingual crawl excerpt
    wiki = next(d for d in docs if d["source"] == "url")
    assert wiki["url"] == "https://an.wikipedia.org/wiki/Escopete" and wiki["lang"] in (
        "an",
        "es",
    )  # Aragonese; lid.176 often says Spanish
    assert meta(wiki)["_locator"].startswith("file://")
    # Most of the words of Common Crawl's own WET text for the page are in ours.
    with gzip.open(warc / "cc_whirlwind" / "whirlwind.warc.wet.gz", "rt", encoding="utf-8") as f:
        wet_words = set(f.read().split("\r\n\r\n", 2)[-1].split())
    assert len(wet_words & set(wiki["text"].split())) > 0.5 * len(set(wiki["text"].split()))


# ------------------------------------------------------------------------------------ HTML


@needs_shared
def test_html_folder_with_urls_and_metadata(tmp_path):
    bench = SHARED / "html" / "article_extraction_benchmark"
    truth = [json.loads(line) for line in (bench / "ground_truth.jsonl").open(encoding="utf-8")]
    pages = tmp_path / "pages"
    pages.mkdir()
    for row in truth[:6]:
        shutil.copy(bench / "html" / f"{row['id']}.html.gz", pages / f"{row['id']}.html.gz")
    (tmp_path / "urls.jsonl").write_text(
        "".join(
            json.dumps({"file": f"{r['id']}.html.gz", "url": r["url"]}) + "\n" for r in truth[:3]
        ),
        encoding="utf-8",
    )
    raw = [{"type": "html", "name": "news", "path": "pages", "urls": "urls.jsonl"}]
    manifest, docs = ingest(tmp_path, raw)
    assert manifest["counts"]["documents"] == 6
    assert manifest["stats"]["extractors"]["resiliparse"] >= 4
    assert [d["url"] for d in docs[:3]] == [r["url"] for r in truth[:3]]
    assert all(d["url"] for d in docs[3:])  # the pages' canonical links
    assert docs[0]["title"] == "Opinion | Republicans Are Following Trump to Nowhere"
    assert all(d["lang"] == "en" and d["title"] for d in docs)
    for doc, row in zip(docs, truth, strict=False):
        words = set(row["articleBody"].split())
        assert len(words & set(doc["text"].split())) > 0.8 * len(words)

    _, precise = ingest(tmp_path, raw, out="traf", extraction={"extractor": "trafilatura"})
    assert all(meta(d)["extractor"] == "trafilatura" for d in precise)
    assert [d["id"] for d in precise] == [d["id"] for d in docs]


# ----------------------------------------------------------------------------------- feeds


def _rss(items: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
        f"<title>Local news</title>{items}</channel></rss>"
    ).encode()


def test_feeds_one_document_per_item_and_joined_pages(tmp_path):
    feeds = tmp_path / "feeds"
    shutil.copytree(WEB_SAMPLE, feeds, ignore=shutil.ignore_patterns("*.warc*"))
    # An item with only a summary whose page is in a local WARC: the page's text is used.
    (feeds / "local.rss").write_bytes(
        _rss(
            "<item><title>Example</title><link>http://example.com/</link>"
            "<description>Short teaser.</description>"
            "<pubDate>Fri, 03 Jan 2014 03:03:21 GMT</pubDate></item>"
            "<item><title>Elsewhere</title><link>http://nowhere.example/</link>"
            "<description>Only a summary, and no page for it.</description></item>"
        )
    )
    (feeds / "items.json").write_text(
        json.dumps(
            {
                "version": "https://jsonfeed.org/version/1.1",
                "title": "JSON",
                "items": [{"id": "1", "url": "https://x.example/1", "content_text": "Plain text."}],
            }
        ),
        encoding="utf-8",
    )
    raw = [{"type": "feed", "path": "feeds", "pages": str(WEB_SAMPLE / "*.warc*")}]
    manifest, docs = ingest(tmp_path, raw)
    by_file: dict[str, list] = {}
    for doc in docs:
        by_file.setdefault(meta(doc)["_locator"].split("#")[0], []).append(doc)
    assert len(by_file["feeds/heise.atom"]) == 15 and len(by_file["feeds/rss_2.0_bbc.xml"]) == 1
    heise = by_file["feeds/heise.atom"][0]
    assert heise["lang"] == "de" and heise["url"].startswith("http://www.heise.de/")
    assert heise["published"].startswith("20") and heise["title"]
    joined, alone = by_file["feeds/local.rss"]
    assert meta(joined)["text_from"] == "page" and meta(joined)["summary"] == "Short teaser."
    assert "illustrative examples" in joined["text"]
    assert joined["published"] == "2014-01-03T03:03:21Z"
    assert meta(alone)["text_from"] == "summary" and alone["text"].startswith("Only a summary")
    assert by_file["feeds/items.json"][0]["text"] == "Plain text."
    assert manifest["counts"]["quarantined"] == 0


@needs_shared
def test_real_feeds_including_malformed_ones(tmp_path):
    with tarfile.open(SHARED / "feeds" / "rss_atom_feeds_shared.tar.gz") as tar:
        tar.extractall(tmp_path / "feeds", filter="data")
    (tmp_path / "feeds" / "index.jsonl").unlink()
    manifest, docs = ingest(tmp_path, [{"type": "feed", "name": "feeds", "path": "feeds"}])
    counts = manifest["counts"]
    assert counts["by_source"]["feeds"]["files"] == 46
    assert counts["documents"] > 300
    # unrecognized.rss is an HTML "Document Moved" page: nothing to recover.
    assert counts["quarantined_by_reason"]["malformed_feed"] == 1
    # Broken XML that the lenient parser still reads is kept, and noted.
    assert counts["repaired_by_reason"]["malformed_feed_recovered"] >= 3
    langs = counts["languages"]
    assert langs["en"] > 200 and langs["pt"] > 10 and langs["de"] > 10
    uol = [d for d in docs if "uolNoticias" in meta(d)["_locator"]]
    assert uol and "\ufffd" not in "".join(d["text"] for d in uol)  # ISO-8859-1 honoured


# ------------------------------------------------------------------------------------- HF


def test_hf_saved_dataset_and_local_data_files(tmp_path):
    import datasets

    articles = [
        json.loads(line)
        for line in gzip.open(REPO / "data" / "sample" / "wikitext2_test_articles.jsonl.gz", "rt")
    ]
    rows = {
        "body": [a["text"] for a in articles[:8]],
        "headline": [a["title"] for a in articles[:8]],
    }
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows), "test": datasets.Dataset.from_dict(rows)}
    ).save_to_disk(str(tmp_path / "saved"))
    files = tmp_path / "files"
    files.mkdir()
    datasets.Dataset.from_dict(rows).to_parquet(str(files / "a.parquet"))
    datasets.Dataset.from_dict(rows).to_json(str(files / "b.jsonl"))
    mapping = {"text_field": "body", "fields": {"title": "headline"}}
    raw = [
        {"type": "hf", "name": "disk", "path": "saved", "split": "test", **mapping},
        {"type": "hf", "name": "files", "path": "files", **mapping},
        {"type": "hf", "name": "hub", "path": "no-such-user/no-such-dataset", **mapping},
    ]
    manifest, docs = ingest(tmp_path, raw)
    counts = manifest["counts"]["by_source"]
    assert counts["disk"]["documents"] == 8 and counts["files"]["documents"] == 16
    # HF_DATASETS_OFFLINE=1 in tests: the hub source cannot load, and says so.
    assert counts["hub"]["documents"] == 0
    assert manifest["counts"]["quarantined_by_reason"] == {"unreadable_dataset": 1}
    disk = [d for d in docs if d["source"] == "disk"]
    assert [d["title"] for d in disk] == rows["headline"] and disk[0]["lang"] == "en"
    assert meta(disk[0])["_locator"] == "saved[test]#0"
    assert [meta(d)["_locator"] for d in docs if d["source"] == "files"][::8] == [
        "files/a.parquet#0",
        "files/b.jsonl#0",
    ]


# ------------------------------------------------------------------------------- bad input


def _warc_with_corrupt_third_record(path: Path) -> None:
    data = (WEB_SAMPLE / "example-iana.org-chunked.warc").read_bytes()
    third = data.index(b"WARC/1.0", 500)  # after the warcinfo and the response
    path.write_bytes(
        data[:third] + b"WARC/9.9 GARBAGE\r\nnot: a header\r\n\r\n" + data[third + 8 :]
    )


def test_every_bad_input_is_counted_and_quarantined(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    # unreadable file: bytes that are no Parquet file
    (bad / "broken.parquet").write_bytes(b"PAR1 this is not really parquet")
    # truncated gzip: a WARC.gz cut in the middle of its response record
    whole = (WEB_SAMPLE / "example.warc.gz").read_bytes()
    (bad / "cut.warc.gz").write_bytes(whole[:1500])
    # corrupt WARC record: the third record's header is garbage
    _warc_with_corrupt_third_record(bad / "corrupt.warc")
    # malformed JSON line
    (bad / "lines.jsonl").write_bytes(b'{"text": "A good line of text."}\n{"text": "unterminated\n')
    # undecodable bytes: declared UTF-8, valid in no candidate charset -> replaced, kept
    (bad / "pages").mkdir()
    (bad / "pages" / "bytes.html").write_bytes(
        b'<html><head><meta charset="utf-8"><title>Bytes</title></head><body><article><p>'
        + b"Caf\xe9 \x81\x8d\x90 " * 30
        + b"and a real sentence that carries on for a while to be main text.</p></article></body></html>"
    )
    # HTML page with no extractable text
    (bad / "pages" / "empty.html").write_bytes(
        b"<html><head><title>t</title></head><body><script>var x=1;</script></body></html>"
    )
    # feed with broken XML (nothing recoverable)
    (bad / "broken.rss").write_bytes(
        b"<html><body><h1>Document Moved</h1><a href='x'>here</b></body>"
    )

    raw = [
        {"type": "parquet", "name": "parquet", "path": "bad/broken.parquet"},
        {"type": "warc", "name": "warc", "path": "bad/*.warc*"},
        {"type": "jsonl", "name": "jsonl", "path": "bad/lines.jsonl"},
        {"type": "html", "name": "html", "path": "bad/pages"},
        {"type": "feed", "name": "feed", "path": "bad/broken.rss"},
    ]
    manifest, docs = ingest(tmp_path, raw)
    counts = manifest["counts"]
    assert counts["quarantined_by_reason"] == {
        "corrupt_warc_record": 1,
        "malformed_feed": 1,
        "malformed_json": 1,
        "no_extractable_text": 1,
        "truncated_gzip": 1,
        "unreadable_file": 1,
    }
    assert counts["repaired_by_reason"] == {"undecodable_bytes": 1}
    assert counts["by_source"]["warc"]["documents"] == 1  # the record before the corrupt one
    kept = {d["source"]: d for d in docs}
    assert set(kept) == {"warc", "jsonl", "html"}
    assert "\ufffd" in kept["html"]["text"] and meta(kept["html"])["_undecodable_bytes"]

    entries = read_quarantine(tmp_path / "out")
    reasons = {e["reason"]: e for e in entries}
    assert set(reasons) == set(counts["quarantined_by_reason"]) | {"undecodable_bytes"}
    assert reasons["truncated_gzip"]["locator"].startswith("bad/cut.warc.gz")
    # the broken record itself (reading resumes at the next record, if any)
    assert reasons["corrupt_warc_record"]["locator"] == "bad/corrupt.warc@8379"
    assert reasons["malformed_json"]["locator"] == "bad/lines.jsonl:2"
    assert reasons["no_extractable_text"]["locator"] == "bad/pages/empty.html"
    assert reasons["malformed_feed"]["locator"] == "bad/broken.rss"
    assert all(e["source"] and e["locator"] and e["detail"] for e in entries)


# ------------------------------------------------------------------------- parallel units


def test_same_output_for_one_and_two_workers(tmp_path):
    articles = [
        json.loads(line)
        for line in gzip.open(REPO / "data" / "sample" / "wikitext2_test_articles.jsonl.gz", "rt")
    ]
    lines = "".join(json.dumps({"text": a["text"]}) + "\n" for a in articles[:40])
    (tmp_path / "big.jsonl").write_text(
        lines + "not json\n" + lines[:2000] + "\n", encoding="utf-8"
    )
    raw = [
        {"type": "jsonl", "path": "big.jsonl"},
        {"type": "warc", "path": str(WEB_SAMPLE / "*.warc*")},
        {"type": "feed", "path": str(WEB_SAMPLE / "*.atom")},
    ]
    settings = {"split_bytes": 50_000, "max_docs_per_shard": 7}
    one, docs_one = ingest(tmp_path, raw, "one", SerialExecutor(), **settings)
    with ProcessExecutor(2) as two_workers:
        two, docs_two = ingest(tmp_path, raw, "two", two_workers, **settings)
    assert one["stats"]["units"] > 4  # the JSONL file was cut into byte ranges
    assert docs_one == docs_two and one["counts"] == two["counts"]
    assert read_quarantine(tmp_path / "one") == read_quarantine(tmp_path / "two")
    shards = sorted(p.name for p in (tmp_path / "two").glob("part-*.parquet"))
    assert shards == sorted(p.name for p in (tmp_path / "one").glob("part-*.parquet"))
    assert all(pq.ParquetFile(tmp_path / "two" / s).metadata.num_rows <= 7 for s in shards)

    # Locators (and so ids) are the same as reading the file whole.
    whole, docs_whole = ingest(tmp_path, raw[:1], "whole")
    assert [d["id"] for d in docs_whole] == [
        d["id"] for d in docs_one if d["source"] == "jsonl:big.jsonl"
    ]
    bad_line = [e["locator"] for e in read_quarantine(tmp_path / "one")]
    assert "big.jsonl:41" in bad_line


# --------------------------------------------------------------------------------- langid


@needs_shared
def test_language_identification_on_real_sentences(tmp_path):
    rows = [
        json.loads(line)
        for line in gzip.open(SHARED / "langid" / "lingua_sentences_shared.jsonl.gz", "rt")
    ]
    picked = [r for r in rows if r["lang"] in {"en", "de", "fr", "es", "ru", "zh", "ar", "hi"}][
        ::20
    ]
    (tmp_path / "s.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in picked), encoding="utf-8"
    )
    raw = [{"type": "jsonl", "path": "s.jsonl", "fields": {"id": "id"}}]
    for method in ("py3langid", "fasttext", "lingua"):
        manifest, docs = ingest(tmp_path, raw, out=method, langid={"method": method})
        right = sum(d["lang"] == meta(d)["lang"] for d in docs)
        assert right >= 0.85 * len(docs), (method, right, len(docs))
        assert all(0 < meta(d)["lang_score"] <= 1 for d in docs if d["lang"])
    _, mapped = ingest(tmp_path, [dict(raw[0], fields={"lang": "lang"})], out="mapped")
    assert all(
        d["lang"] == meta(d).get("lang", d["lang"]) and "lang_score" not in meta(d) for d in mapped
    )
    _, off = ingest(tmp_path, raw, out="off", langid={"method": "none"})
    assert {d["lang"] for d in off} == {None}


# ------------------------------------------------------------------------- one config


def test_all_source_types_in_one_config_through_the_dag(tmp_path):
    import datasets
    import yaml

    from pipeline.config import load_config
    from pipeline.dag import plan, run_stage
    from pipeline.reports import stage_markdown

    sample = REPO / "data" / "sample"
    datasets.Dataset.from_dict(
        {"text": ["A dataset row with enough words to be a document of its own."] * 3}
    ).save_to_disk(str(tmp_path / "hfdata"))
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "page.html").write_text(
        "<html lang='en'><head><title>A saved page</title></head><body><nav>Home | About</nav>"
        "<article><p>" + "A saved page holds a paragraph of real text. " * 12 + "</p></article>"
        "</body></html>",
        encoding="utf-8",
    )
    config = {
        "name": "all-sources",
        "workdir": str(tmp_path / "work"),
        "sources": [
            {"type": "jsonl", "path": str(sample / "ftfy_text_snippets.jsonl")},
            {"type": "csv", "path": str(sample / "squad_contexts.csv"), "text_field": "context"},
            {"type": "text", "path": str(sample / "botchan.txt"), "split": "paragraphs"},
            {"type": "parquet", "path": "data.parquet"},
            {"type": "hf", "path": "hfdata"},
            {"type": "warc", "path": str(sample / "web" / "*.warc*")},
            {"type": "html", "path": "pages"},
            {"type": "feed", "path": str(sample / "web" / "*.xml")},
        ],
        "ingest": {"extraction": {"extractor": "fast-with-fallback", "timeout_seconds": 10}},
    }
    datasets.Dataset.from_dict({"text": ["One parquet row of text."]}).to_parquet(
        str(tmp_path / "data.parquet")
    )
    (tmp_path / "all.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    cfg = load_config(tmp_path / "all.yaml")
    ingest_stage = next(p for p in plan(cfg, Path(cfg.workdir)) if p.name == "ingest")
    result = run_stage(ingest_stage, cfg, log=lambda line: None)
    documents = {name: c["documents"] for name, c in result.counts["by_source"].items()}
    assert all(documents.values()), documents
    assert len(documents) == 8 and result.counts["quarantined"] == 0
    report = stage_markdown(ingest_stage.stage, result)
    assert "## Languages" in report and "## Sources" in report and "## Examples" in report
    assert run_stage(ingest_stage, cfg).reused


def test_a_slow_page_is_cut_off_by_the_time_limit_in_any_thread(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    raw = [{"type": "warc", "path": str(WEB_SAMPLE / "*chunked.warc")}]
    slow = {"extraction": {"extractor": "trafilatura", "timeout_seconds": 0.0005}}
    manifest, docs = ingest(tmp_path, raw, out="main", **slow)
    assert docs == [] and manifest["counts"]["quarantined_by_reason"] == {"extraction_timeout": 1}
    # A stage run from an orchestrator's worker thread (no SIGALRM there) runs its web units
    # in a worker process, where the limit holds as well.
    with ThreadPoolExecutor(1) as pool:
        manifest, docs = pool.submit(ingest, tmp_path, raw, "thread", None, **slow).result()
    assert docs == [] and manifest["counts"]["quarantined_by_reason"] == {"extraction_timeout": 1}
    _, kept = ingest(tmp_path, raw, out="roomy", extraction={"extractor": "trafilatura"})
    assert len(kept) == 1


def test_web_source_and_ingest_settings_are_validated():
    from pipeline.config import ConfigError, validate_config

    good = {
        "sources": [{"type": "warc", "path": "x.warc.gz"}, {"type": "hf", "path": "a/b"}],
        "ingest": {"extraction": {"extractor": "resiliparse"}, "langid": {"method": "lingua"}},
    }
    config = validate_config(good)
    assert config.ingest.extraction.extractor == "resiliparse"
    assert config.sources[1].split == "train" and config.ingest.langid.max_chars == 500
    with pytest.raises(ConfigError) as bad:
        validate_config({**good, "ingest": {"extraction": {"extractor": "magic", "timeout": 1}}})
    message = str(bad.value)
    assert "ingest.extraction.extractor" in message and "ingest.extraction.timeout" in message
    with pytest.raises(ConfigError, match="unknown source type 'rss'"):
        validate_config({"sources": [{"type": "rss", "path": "f.xml"}]})
    with pytest.raises(ConfigError, match="sources.0.warc.text_field: unknown key"):
        validate_config({"sources": [{"type": "warc", "path": "x", "text_field": "body"}]})
