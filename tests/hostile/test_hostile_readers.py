"""The mechanisms behind the hostile-corpus test, one by one and fast (the corpus test is slow):
the extraction worker's hard time limit, WARC resynchronisation, CSV recovery, bounded lines and
gzip, encodings, and sources confined to their root."""

from __future__ import annotations

import codecs
import gzip
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from pydantic import TypeAdapter

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_corpus import gzip_bomb, page, warc_record  # noqa: E402

from pipeline.config import ExtractionConfig, IngestConfig, SourceConfig  # noqa: E402
from pipeline.documents import iter_documents  # noqa: E402
from pipeline.ingest import run_ingest  # noqa: E402
from pipeline.ingest.files import TextLines, match_source_files, open_binary  # noqa: E402
from pipeline.ingest.html import ExtractionFailed  # noqa: E402
from pipeline.ingest.sandbox import Worker  # noqa: E402
from pipeline.ingest.web import Page, iter_warc_pages  # noqa: E402
from pipeline.quarantine import read_quarantine  # noqa: E402

TEXT = (
    "The committee met on a cold morning in March. Its members argued about the budget for an "
    "hour. Nobody wanted to cut the library's hours. In the end they agreed to sell the old "
    "tram depot instead. The sale paid for two more years of evening opening. The town was "
    "pleased, and the papers said so at length. "
)
# Under every cap (190,000 tags, 990 deep), yet seconds in resiliparse's C code.
SLOW_PAGE = b"<html><body>" + (b"<div>" * 990 + b"x" + b"</div>" * 990) * 99 + b"</body></html>"


def ingest(tmp_path: Path, raw: list[dict], out: str = "out", **settings):
    adapter = TypeAdapter(SourceConfig)
    manifest = run_ingest(
        [adapter.validate_python(r) for r in raw],
        str(tmp_path),
        tmp_path / out,
        IngestConfig(**settings),
    )
    return manifest, list(iter_documents(tmp_path / out)), read_quarantine(tmp_path / out)


# ------------------------------------------------------------------------ extraction worker


def test_the_extraction_worker_is_killed_at_its_hard_limit_and_replaced():
    # A soft limit of 0.2 s (SIGALRM, which waits for the C code to return) and a hard one
    # 0.1 s later: the page takes seconds in C, so only the kill can stop it in time.
    worker = Worker(ExtractionConfig(timeout_seconds=0.2).model_dump(), grace=0.1)
    try:
        worker.call("fragments", ["<p>warm</p>"])
        first = worker.process
        with pytest.raises(ExtractionFailed) as failed:
            worker.call("extract", SLOW_PAGE, None)
        assert failed.value.reason == "extraction_timeout"
        assert "was killed" in failed.value.detail and first.poll() is not None
        extracted = worker.call("extract", page(TEXT).encode(), None)  # a fresh worker
        assert "tram depot" in extracted.text and worker.process is not first
    finally:
        worker.close()


def test_a_worker_that_dies_during_a_call_fails_that_call_only():
    worker = Worker(ExtractionConfig(timeout_seconds=30).model_dump())
    try:
        worker.call("fragments", ["<p>warm</p>"])
        threading.Timer(0.5, worker.process.kill).start()
        with pytest.raises(ExtractionFailed) as failed:
            worker.call("extract", SLOW_PAGE, None)
        assert failed.value.reason == "extraction_crashed"
        assert worker.call("fragments", ["<p>still <b>works</b></p>"]) == ["still works"]
    finally:
        worker.close()


# -------------------------------------------------------------------------------------- WARC


def _pages(path: Path) -> list:
    return [
        ("page", p.url) if isinstance(p, Page) else (p.reason, p.locator)
        for p in iter_warc_pages(path, path.name, 10_000_000, Counter())
    ]


def test_warc_reader_resynchronises_after_a_wrong_content_length(tmp_path):
    good = [warc_record(f"http://x.example/{i}", page(TEXT).encode()) for i in range(3)]
    long = warc_record("http://x.example/long", page(TEXT).encode(), length_delta=900)
    short = warc_record("http://x.example/short", page(TEXT).encode(), length_delta=-300)
    (tmp_path / "a.warc").write_bytes(good[0] + long + good[1] + short + good[2])
    found = _pages(tmp_path / "a.warc")
    assert [f for f in found if f[0] == "page"] == [
        ("page", f"http://x.example/{i}") for i in range(3)
    ]
    assert [f[0] for f in found if f[0] != "page"] == ["corrupt_warc_record"] * 2


def test_warc_reader_keeps_the_records_around_a_corrupt_gzip_member(tmp_path):
    members = [
        gzip.compress(warc_record(f"http://m.example/{i}", page(TEXT).encode())) for i in range(5)
    ]
    broken = bytearray(members[2])
    broken[50:90] = bytes(b ^ 0x5A for b in broken[50:90])
    (tmp_path / "m.warc.gz").write_bytes(b"".join(members[:2] + [bytes(broken)] + members[3:]))
    found = _pages(tmp_path / "m.warc.gz")
    assert [u for kind, u in found if kind == "page"] == [
        f"http://m.example/{i}" for i in (0, 1, 3, 4)
    ]
    assert [kind for kind, _ in found if kind != "page"] == ["corrupt_gzip"]


def test_warc_reader_reads_past_a_huge_header_line_linearly(tmp_path):
    huge = b"WARC/1.0\r\nWARC-Type: response\r\nX-Junk: " + b"A" * 20_000_000 + b"\r\n\r\n"
    last = warc_record("http://h.example/after", page(TEXT).encode())
    (tmp_path / "h.warc.gz").write_bytes(gzip.compress(huge + last, 1))
    started = time.monotonic()
    found = _pages(tmp_path / "h.warc.gz")
    assert found[0][0] == "corrupt_warc_record" and found[1] == ("page", "http://h.example/after")
    assert time.monotonic() - started < 60


# ------------------------------------------------------------------------------ line files


def test_a_long_line_and_a_gzip_bomb_are_refused_with_bounded_memory(tmp_path):
    (tmp_path / "long.jsonl").write_bytes(
        b'{"text": "' + b"word " * (4 << 20) + b'"}\n{"text": "' + TEXT.encode() + b'"}\n'
    )
    (tmp_path / "bomb.jsonl.gz").write_bytes(gzip_bomb(1 << 30, b'{"text": "x"}\n', b"A"))
    import pipeline.ingest.files as files

    limit = files.MAX_RECORD_BYTES
    files.MAX_RECORD_BYTES = 1 << 20  # the same code path as 16 MiB, smaller
    try:
        manifest, docs, entries = ingest(tmp_path, [{"type": "jsonl", "path": "*.jsonl*"}])
    finally:
        files.MAX_RECORD_BYTES = limit
    reasons = {e["locator"]: e["reason"] for e in entries}
    assert reasons["long.jsonl:1"] == "record_too_large"
    assert reasons["bomb.jsonl.gz after bomb.jsonl.gz:1"] == "gzip_bomb"
    assert [d["text"] for d in docs] == ["x", TEXT]  # the lines around them are kept
    assert all(len(e["record"] or "") <= 200 for e in entries)


def test_csv_row_with_an_unclosed_quote_costs_only_that_row(tmp_path):
    (tmp_path / "q.csv").write_text(
        'text,n\n"first row",1\n"unclosed, and on,2\n"next good row",3\nplain,4\n', encoding="utf-8"
    )
    manifest, docs, entries = ingest(tmp_path, [{"type": "csv", "path": "q.csv"}])
    assert [d["text"] for d in docs] == ["first row", "next good row", "plain"]
    assert [(e["reason"], e["locator"]) for e in entries] == [("malformed_csv_row", "q.csv#2")]


def test_every_line_reader_follows_the_byte_order_mark_then_detects(tmp_path):
    (tmp_path / "a.txt").write_bytes(("Grüße aus Köln.\n").encode("utf-16"))
    (tmp_path / "b.txt").write_bytes(codecs.BOM_UTF16_BE + "Ünïcödé text.\n".encode("utf-16-be"))
    (tmp_path / "c.txt").write_bytes("Ça coûte trop cher, dit-il.\n".encode("cp1252"))
    (tmp_path / "d.txt").write_bytes(b"\x00\x01\x02binary\x00\x00" * 100)
    texts = {}
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        with open_binary(tmp_path / name) as handle:
            lines = TextLines(handle)
            texts[name] = lines.binary or "".join(line.text for line in lines)
    assert texts["a.txt"] == "Grüße aus Köln.\n" and texts["b.txt"] == "Ünïcödé text.\n"
    assert texts["c.txt"] == "Ça coûte trop cher, dit-il.\n"
    assert "NUL bytes" in texts["d.txt"]


# ---------------------------------------------------------------------------------- listing


def test_links_out_of_the_root_are_read_only_when_the_source_asks(tmp_path):
    outside = tmp_path / "outside.jsonl"
    outside.write_text('{"text": "outside the root"}\n', encoding="utf-8")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "in.jsonl").write_text('{"text": "inside"}\n', encoding="utf-8")
    (tmp_path / "root" / "out.jsonl").symlink_to(outside)
    (tmp_path / "root" / "loop").symlink_to(".", target_is_directory=True)
    _, docs, entries = ingest(tmp_path, [{"type": "jsonl", "path": "root/**/*.jsonl"}])
    assert [d["text"] for d in docs] == ["inside"]
    assert sorted((e["reason"], e["locator"]) for e in entries) == [
        ("link_outside_root", "root/out.jsonl"),
        ("symlink_loop", "root/loop"),
    ]
    assert all(e["record"] is None for e in entries)  # nothing of what the link points at
    source = {"type": "jsonl", "path": "root", "follow_links": True}
    _, docs, _ = ingest(tmp_path, [source], out="followed")
    assert sorted(d["text"] for d in docs) == ["inside", "outside the root"]


def test_a_file_that_vanishes_between_listing_and_reading_is_reported(tmp_path, monkeypatch):
    import pipeline.ingest.stage as stage

    (tmp_path / "a.jsonl").write_text('{"text": "stays"}\n', encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "goes"}\n', encoding="utf-8")
    plan = stage.plan_units

    def plan_then_delete(*args, **kwargs):
        units = plan(*args, **kwargs)
        (tmp_path / "b.jsonl").unlink()
        return units

    monkeypatch.setattr(stage, "plan_units", plan_then_delete)
    manifest, docs, entries = ingest(tmp_path, [{"type": "jsonl", "path": "*.jsonl"}])
    assert [d["text"] for d in docs] == ["stays"]
    assert [(e["reason"], e["locator"]) for e in entries] == [("unreadable_file", "b.jsonl")]


def test_a_file_name_that_is_not_utf8_is_escaped(tmp_path):
    name = os.path.join(os.fsencode(tmp_path), b"caf\xe9.jsonl")
    with open(name, "wb") as handle:
        handle.write(b'{"text": "a name in latin-1"}\n')
    matched = match_source_files("jsonl", ".", tmp_path)
    assert matched.names == ["caf\\xe9.jsonl"]
    _, docs, _ = ingest(tmp_path, [{"type": "jsonl", "path": "."}])
    assert [d["text"] for d in docs] == ["a name in latin-1"]
