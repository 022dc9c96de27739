"""Generate the hostile-input corpus of issue 13 into a folder, each hostile input next to good
documents, with what must become of each.

    python tests/hostile/make_corpus.py OUT_DIR

writes OUT_DIR/corpus/ (the sources' root: one folder per source), OUT_DIR/outside/ (a file with
a secret marker, outside every source's root, that symlinks in the corpus point at),
OUT_DIR/config.yaml (ingest -> clean -> dedup over the corpus) and OUT_DIR/cases.json: one entry
per input (a file, a link, a FIFO) with the source it belongs to, the quarantine reasons its
refusal must carry (`reasons`), probes of good documents in or beside it that must reach the
dedup output (`kept`), and strings that must appear in no output (`absent`). Nothing large is
committed: the big inputs (a 1 GB gzip bomb, a 50 MB line, a 64 MB WARC header line) are made
here, a few seconds and about 160 MB of disk.

Good documents are paragraphs of the bundled WikiText-2 sample that pass clean's default rules
(70-250 words, six or more sentences): each is used once, so dedup keeps every one.
"""

from __future__ import annotations

import codecs
import gzip
import html
import io
import json
import os
import random
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
ARTICLES = REPO / "data" / "sample" / "wikitext2_test_articles.jsonl.gz"
SECRET = "LLMPIPE-SECRET-OUTSIDE-THE-ROOT-5e1f"  # must never reach any output
HEADER_MARKER = "WARC-Hostile-Marker: swallowed-header-4b7c"  # a WARC header, never a document
TIMEOUT_SECONDS = 2.0  # the per-page extraction limit the config sets


@dataclass
class Case:
    path: str  # display name: relative to OUT_DIR (as locators write it)
    source: str
    what: str
    reasons: list[str] = field(default_factory=list)  # each must be among its quarantine entries
    kept: list[str] = field(default_factory=list)  # probes that must reach the dedup output
    absent: list[str] = field(default_factory=list)  # text that must appear in no output
    symlink: bool = False  # a link or special file: accounted by its quarantine entry


def good_paragraphs() -> list[str]:
    with gzip.open(ARTICLES, "rt", encoding="utf-8") as handle:
        articles = [json.loads(line)["text"] for line in handle]
    good = []
    for article in articles:
        for paragraph in article.split("\n\n"):
            paragraph = paragraph.strip()
            words = paragraph.split()
            if (
                70 <= len(words) <= 250
                and "\n" not in paragraph
                and paragraph.endswith(".")
                and len(re.findall(r"[.!?](?:\s|$)", paragraph)) >= 6
                and sum(any(c.isalpha() for c in w) for w in words) >= 0.9 * len(words)
                and paragraph.isascii()
            ):
                good.append(paragraph)
    return good


def probe(text: str) -> str:
    """Eight words from the middle of a good paragraph: what must be found in the output."""
    words = text.split()
    middle = len(words) // 2
    return " ".join(words[middle : middle + 8])


class Corpus:
    def __init__(self, out: Path):
        self.out = out
        self.root = out / "corpus"
        self.cases: list[Case] = []
        self._good = iter(good_paragraphs())

    def good(self) -> str:
        return next(self._good)

    def file(self, folder: str, name: str | bytes, data: bytes) -> Path:
        directory = self.root / folder
        directory.mkdir(parents=True, exist_ok=True)
        if isinstance(name, bytes):
            path = Path(os.fsdecode(os.path.join(os.fsencode(directory), name)))
        else:
            path = directory / name
        path.write_bytes(data)
        return path

    def case(self, path: Path, source: str, what: str, **kwargs) -> None:
        name = os.path.relpath(path, self.out)
        raw = os.fsencode(name)
        display = raw.decode("utf-8", "backslashreplace")  # as files.printable writes it
        self.cases.append(Case(display, source, what, **kwargs))


# ------------------------------------------------------------------------------- helpers


def jsonl(*records: dict) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def page(text: str, title: str = "A page") -> str:
    return (
        f"<html><head><title>{title}</title></head><body><nav>Home | About</nav>"
        f"<article><h1>{title}</h1><p>{html.escape(text, quote=False)}</p></article>"
        "<footer>Contact</footer></body></html>"
    )


def quoted(text: str) -> str:
    """A CSV field, quoted."""
    return '"' + text.replace('"', '""') + '"'


def warc_record(
    uri: str,
    body: bytes,
    *,
    length_delta: int = 0,
    extra: bytes = b"",
    content_type: bytes = b"text/html; charset=utf-8",
    status: bytes = b"200 OK",
    record_id: str | None = None,
    http_extra: bytes = b"",
) -> bytes:
    http = b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type + b"\r\n" + http_extra
    http += b"\r\n" + body
    record_id = record_id or f"urn:uuid:{abs(hash((uri, len(body)))) % 10**12:012d}"
    head = (
        "WARC/1.0\r\nWARC-Type: response\r\n"
        f"WARC-Target-URI: {uri}\r\nWARC-Date: 2024-05-01T12:00:00Z\r\n"
        f"WARC-Record-ID: <{record_id}>\r\n"
        "Content-Type: application/http; msgtype=response\r\n"
        f"Content-Length: {len(http) + length_delta}\r\n"
    ).encode()
    return head + extra + b"\r\n" + http + b"\r\n\r\n"


def warcinfo() -> bytes:
    body = b"software: hostile-corpus\r\n"
    return (
        b"WARC/1.0\r\nWARC-Type: warcinfo\r\nWARC-Date: 2024-05-01T12:00:00Z\r\n"
        b"Content-Type: application/warc-fields\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
        + b"\r\n\r\n"
    )


_BOMB_MEMBER: dict[bytes, bytes] = {}
BOMB_MEMBER_BYTES = 64 << 20


def gzip_bomb(size: int, prefix: bytes = b"", fill: bytes = b"\x00") -> bytes:
    """`prefix` then `size` bytes of `fill`, gzipped (about 1 MB per GB): one gzip member of
    64 MiB of `fill`, repeated (a multi-member gzip file reads as one stream)."""
    if fill not in _BOMB_MEMBER:
        _BOMB_MEMBER[fill] = gzip.compress(fill * BOMB_MEMBER_BYTES, 9)
    return gzip.compress(prefix) + _BOMB_MEMBER[fill] * (size // BOMB_MEMBER_BYTES)


def png_bytes() -> bytes:
    rng = random.Random(7)
    return b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(rng.randrange(256) for _ in range(4000))


def random_bytes(count: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.randrange(256) for _ in range(count))


# --------------------------------------------------------------------------------- cases


def jsonl_cases(c: Corpus) -> None:
    s = "jsonl"
    a, b = c.good(), c.good()
    c.case(
        c.file(s, "good.jsonl", jsonl({"text": a}, {"text": b})),
        s,
        "good lines",
        kept=[probe(a), probe(b)],
    )

    c.case(
        c.file(s, "zeros_bomb.jsonl.gz", gzip_bomb(1 << 30)),
        s,
        "a gzip bomb: 1 GB of zeros in 1 MB (issue 3): binary from its first bytes",
        reasons=["binary_file"],
    )
    a, b = c.good(), c.good()
    data = gzip_bomb(1 << 30, jsonl({"text": a}), b"A")  # 1 GB on one line, after a good one
    c.case(
        c.file(s, "bomb.jsonl.gz", data),
        s,
        "a gzip bomb of text after a good line (issue 3)",
        reasons=["gzip_bomb"],
        kept=[probe(a)],
    )
    c.case(
        c.file(s, "bomb_neighbour.jsonl", jsonl({"text": b})),
        s,
        "a good file beside the bombs",
        kept=[probe(b)],
    )

    a, b = c.good(), c.good()
    long_line = b'{"text": "' + b"word " * (10 << 20) + b'"}\n'  # 50 MB on one line (issue 3)
    c.case(
        c.file(s, "long_line.jsonl", jsonl({"text": a}) + long_line + jsonl({"text": b})),
        s,
        "a 50 MB line between two good ones (issue 3)",
        reasons=["record_too_large"],
        kept=[probe(a), probe(b)],
    )

    a = c.good()
    c.case(
        c.file(s, b"latin1-\xe9.jsonl", jsonl({"text": a})),
        s,
        "a file name that is not UTF-8 (issue 4)",
        kept=[probe(a)],
    )

    for codec, bom, name in (
        ("utf-16-le", codecs.BOM_UTF16_LE, "utf16le_bom.jsonl"),
        ("utf-16-be", codecs.BOM_UTF16_BE, "utf16be_bom.jsonl"),
        ("utf-8", codecs.BOM_UTF8, "utf8_bom.jsonl"),
        ("utf-32-le", codecs.BOM_UTF32_LE, "utf32le_bom.jsonl"),
    ):
        a = c.good()
        data = (
            bom
            + json.dumps({"text": a + " Déjà vu."}, ensure_ascii=False).encode(codec)
            + "\n".encode(codec)
        )
        c.case(
            c.file(s, name, data), s, f"{codec} with a byte-order mark (issue 8)", kept=[probe(a)]
        )

    a = c.good()
    text = a.replace(".", ". Café crème", 1)
    c.case(
        c.file(
            s,
            "cp1252.jsonl",
            json.dumps({"text": text}, ensure_ascii=False).encode("cp1252") + b"\n",
        ),
        s,
        "windows-1252 text, no BOM: detected (issue 8)",
        kept=[probe(a), "Café crème"],
    )

    a, b = c.good(), c.good()
    full = gzip.compress(
        jsonl({"text": a}) + jsonl(*({"text": f"filler line {i} " * 200} for i in range(300)))
    )
    c.case(
        c.file(s, "truncated.jsonl.gz", full[: len(full) // 2]),
        s,
        "a gzip cut in half",
        reasons=["truncated_gzip"],
        kept=[probe(a)],
    )

    c.case(c.file(s, "zero_bytes.jsonl", b""), s, "an empty file", reasons=["empty_file"])
    c.case(
        c.file(s, "blank_lines.jsonl", b"\n\n  \r\n\n"),
        s,
        "only blank lines",
        reasons=["empty_file"],
    )

    a, b = c.good(), c.good()
    bad = b'{"text": "' + a.encode() + b' broken \xff\xfe bytes."}\n'
    first = json.dumps({"text": b + " Naïve café."}, ensure_ascii=False).encode() + b"\n"
    c.case(
        c.file(s, "invalid_utf8_midline.jsonl", first + bad),
        s,
        "invalid UTF-8 in the middle of a line: repaired",
        reasons=["invalid_utf8"],
        kept=[probe(a), probe(b)],
    )

    a, b = c.good(), c.good()
    deep = b'{"text": "deep", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    moderate = '{"text": "nested", "x": ' + "[" * 500 + "]" * 500 + "}\n"
    c.case(
        c.file(
            s,
            "deep_records.jsonl",
            jsonl({"text": a}) + deep + moderate.encode() + jsonl({"text": b}),
        ),
        s,
        "records nested 100,000 and 500 deep",
        reasons=["malformed_json", "too_deeply_nested"],
        kept=[probe(a), probe(b)],
    )

    a, b = c.good(), c.good()
    nul = json.dumps({"text": a.replace(". ", ".\u0000 ", 3)}).encode() + b"\n"
    c.case(
        c.file(s, "nul_escapes.jsonl", nul + jsonl({"text": b + "\u0000"})),
        s,
        "NUL characters in the text (issue 9)",
        reasons=["invalid_characters"],
        kept=[probe(a), probe(b)],
    )

    a = c.good()
    lone = b'{"text": "' + a.encode() + b' \\ud800 and \\udfff."}\n'
    c.case(
        c.file(s, "lone_surrogates.jsonl", lone),
        s,
        "lone surrogate escapes",
        reasons=["invalid_characters"],
        kept=[probe(a)],
    )

    c.case(
        c.file(s, "png_named.jsonl", png_bytes()),
        s,
        "a PNG named .jsonl (issue 9)",
        reasons=["binary_file"],
    )

    a = c.good()
    c.case(
        c.file(
            s,
            "not_objects.jsonl",
            b'[1, 2]\n"a string"\n42\n{"text": 1e999}\n' + jsonl({"text": a}),
        ),
        s,
        "JSON values that are no records",
        reasons=["malformed_json", "non_string_text"],
        kept=[probe(a)],
    )

    a = c.good()
    c.case(
        c.file(s, "crlf_and_cr.jsonl", json.dumps({"text": a}).encode() + b"\r\n\r\r\n"),
        s,
        "CRLF and stray CR line ends",
        kept=[probe(a)],
    )

    words = " ".join(["enormous"] * 200_000) + "."
    a = c.good()
    c.case(
        c.file(s, "huge_document.jsonl", jsonl({"text": words}, {"text": a})),
        s,
        "a 1.8 MB document (under the record limit, over clean's max_words)",
        kept=[probe(a)],
    )

    # links and special files beside the good ones (issues 10 and 15)
    link = c.root / s / "passwd.jsonl"
    link.symlink_to(c.out / "outside" / "secret.jsonl")
    c.case(
        link,
        s,
        "a symlink out of the root, to a secret (issue 15)",
        reasons=["link_outside_root"],
        symlink=True,
    )
    link = c.root / s / "etc_passwd.jsonl"
    link.symlink_to("/etc/passwd")
    c.case(
        link,
        s,
        "a symlink to /etc/passwd (issue 15)",
        reasons=["link_outside_root"],
        absent=["root:x:0:0"],
        symlink=True,
    )
    link = c.root / s / "self_loop.jsonl"
    link.symlink_to("self_loop.jsonl")
    c.case(link, s, "a self-looping symlink (issue 10)", reasons=["symlink_loop"], symlink=True)
    link = c.root / s / "dangling.jsonl"
    link.symlink_to("nowhere/at/all.jsonl")
    c.case(link, s, "a dangling symlink", reasons=["broken_symlink"], symlink=True)
    fifo = c.root / s / "fifo.jsonl"
    os.mkfifo(fifo)
    c.case(
        fifo,
        s,
        "a FIFO named .jsonl (opening it would wait forever)",
        reasons=["not_a_regular_file"],
        symlink=True,
    )
    link = c.root / s / "outside_dir"
    link.symlink_to(c.out / "outside", target_is_directory=True)
    c.case(link, s, "a folder symlink out of the root", reasons=["link_outside_root"], symlink=True)
    a = c.good()
    inner = c.file(f"{s}/real_dir", "inside.jsonl", jsonl({"text": a}))
    link = c.root / s / "inside_link.jsonl"
    link.symlink_to(inner)
    c.case(inner, s, "a file also reached by a symlink inside the root: read once", kept=[probe(a)])
    c.case(
        link,
        s,
        "the symlink to it: a second path, not read again",
        reasons=["duplicate_path"],
        symlink=True,
    )

    # records with their own ids: one repeated
    s = "jsonl-ids"
    a, b = c.good(), c.good()
    data = jsonl({"id": "7", "text": a}, {"id": "7", "text": b}, {"id": "8", "text": a + " Again."})
    c.case(
        c.file("jsonl_ids", "repeated_ids.jsonl", data),
        s,
        "a record id used twice",
        reasons=["duplicate_id"],
        kept=[probe(a)],
    )

    # a glob over a folder with a symlink loop (issue 10)
    s = "globbed"
    a, b = c.good(), c.good()
    c.case(
        c.file("globbed", "top.jsonl", jsonl({"text": a})),
        s,
        "a file at the glob's top",
        kept=[probe(a)],
    )
    c.case(
        c.file("globbed/sub", "deeper.jsonl", jsonl({"text": b})),
        s,
        "a file one folder down",
        kept=[probe(b)],
    )
    loop = c.root / "globbed" / "sub" / "loop"
    loop.symlink_to("..", target_is_directory=True)
    c.case(
        loop, s, "a folder symlink back up: a loop for **", reasons=["symlink_loop"], symlink=True
    )


def csv_cases(c: Corpus) -> None:
    s = "csv"

    def rows(*texts: str) -> str:
        return "".join(f"{quoted(t)},ok\n" for t in texts)

    a, b = c.good(), c.good()
    c.case(
        c.file(s, "good.csv", ("text,label\n" + rows(a, b)).encode()),
        s,
        "good rows",
        kept=[probe(a), probe(b)],
    )

    a, b, d = c.good(), c.good(), c.good()
    data = f'text,label\n{quoted(a)},ok\n"unclosed quote, then a newline,bad\n{quoted(b)},ok\n{quoted(d)},ok\n'
    c.case(
        c.file(s, "unclosed_quote.csv", data.encode()),
        s,
        "an unclosed quote before a good row (issue 9)",
        reasons=["malformed_csv_row"],
        kept=[probe(a), probe(b), probe(d)],
    )

    a, b = c.good(), c.good().replace(",", "").replace('"', "")
    data = f'text,label\n{quoted(a)},ok\n"never closed,x\n{b},ok\nlast line,ok\n'
    c.case(
        c.file(s, "unclosed_to_eof.csv", data.encode()),
        s,
        "a quote that is never closed",
        reasons=["malformed_csv_row"],
        kept=[probe(a), probe(b)],
    )

    a, b = c.good(), c.good()
    data = f'text,label\n{quoted(a)},ok\n"{"x" * (20 << 20)}",big\n{quoted(b)},ok\n'
    c.case(
        c.file(s, "huge_field.csv", data.encode()),
        s,
        "a 20 MB field",
        reasons=["record_too_large"],
        kept=[probe(a), probe(b)],
    )

    a = c.good()
    data = ("text,label\n" + quoted(a.replace(". ", ".\x00 ", 2)) + ",ok\n").encode()
    c.case(
        c.file(s, "nul_in_field.csv", data),
        s,
        "NUL characters in a field (issue 9)",
        reasons=["invalid_characters"],
        kept=[probe(a)],
    )

    a = c.good()
    c.case(
        c.file(s, "wrong_width.csv", f"text,label\n{quoted(a)},ok\nx,y,z\n".encode()),
        s,
        "a row of the wrong width",
        reasons=["malformed_csv_row"],
        kept=[probe(a)],
    )

    a = c.good()
    data = codecs.BOM_UTF16_LE + f"text\tlabel\n{quoted(a + ' Ça va.')}\tok\n".encode("utf-16-le")
    c.case(
        c.file("csv_tab", "excel_utf16.tsv", data),
        "csv-tab",
        "a UTF-16 tab-separated export, as Excel writes it (issue 8)",
        kept=[probe(a)],
    )

    c.case(
        c.file(s, "zip_named.csv", b"PK\x03\x04" + random_bytes(3000, 3)),
        s,
        "a ZIP named .csv (issue 9)",
        reasons=["binary_file"],
    )
    c.case(
        c.file(s, "header_only.csv", b"text,label\n"),
        s,
        "a header and no rows",
        reasons=["empty_file"],
    )

    a = c.good()
    data = ("text,label\n" + quoted(a + " Señor Müller.") + ",ok\n").encode("cp1252")
    c.case(
        c.file(s, "cp1252.csv", data),
        s,
        "windows-1252, detected (issue 8)",
        kept=[probe(a), "Señor Müller"],
    )

    c.case(
        c.file(s, "bomb.csv.gz", gzip_bomb(256 << 20, b"text,label\n", b" ")),
        s,
        "a gzip bomb (256 MB of spaces)",
        reasons=["gzip_bomb"],
    )


def text_cases(c: Corpus) -> None:
    s = "text"
    a, b = c.good(), c.good()
    c.case(
        c.file(s, "good.txt", f"{a}\n\n{b}\n".encode()),
        s,
        "good paragraphs",
        kept=[probe(a), probe(b)],
    )

    a = c.good()
    c.case(
        c.file(s, "utf16_bom.txt", (a + "\n\nÉté.\n").encode("utf-16")),
        s,
        "UTF-16 with a BOM (issue 8)",
        kept=[probe(a)],
    )
    a = c.good()
    c.case(
        c.file(s, "utf16_no_bom.txt", (a + "\n").encode("utf-16-be")),
        s,
        "UTF-16 without a BOM",
        kept=[probe(a)],
    )

    c.case(
        c.file(s, "pdf_named.txt", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + random_bytes(5000, 1)),
        s,
        "a PDF named .txt (issue 9)",
        reasons=["binary_file"],
    )
    c.case(
        c.file(s, "random.txt", random_bytes(20000, 2)),
        s,
        "random bytes named .txt (issue 9)",
        reasons=["binary_file"],
    )

    a = c.good()
    c.case(
        c.file(s, "nul_sprinkled.txt", a.replace(". ", ".\x00 ", 3).encode() + b"\n"),
        s,
        "a few NUL bytes in text (issue 9)",
        reasons=["invalid_characters"],
        kept=[probe(a)],
    )

    a, b = c.good(), c.good()
    big = "\n".join(["a very long paragraph line " * 40] * 20000)  # ~21 MB, no blank line
    c.case(
        c.file(s, "huge_paragraph.txt", f"{a}\n\n{big}\n\n{b}\n".encode()),
        s,
        "a 21 MB paragraph between good ones",
        reasons=["record_too_large"],
        kept=[probe(a), probe(b)],
    )

    a = c.good()
    c.case(
        c.file(s, "no_newline_30mb.txt", f"{a}\n\n".encode() + b"x" * (30 << 20)),
        s,
        "30 MB without a line end",
        reasons=["record_too_large"],
        kept=[probe(a)],
    )

    a = c.good()
    full = gzip.compress(f"{a}\n\n".encode() + random_bytes(200_000, 4).hex().encode())
    c.case(
        c.file(s, "truncated.txt.gz", full[: len(full) // 2]),
        s,
        "a gzip cut in half",
        reasons=["truncated_gzip"],
        kept=[probe(a)],
    )
    c.case(c.file(s, "zero.txt", b""), s, "an empty file", reasons=["empty_file"])
    c.case(
        c.file(s, "whitespace.txt", b"   \n\n\t\n"), s, "only whitespace", reasons=["empty_file"]
    )

    a = c.good()
    c.case(
        c.file(s, "cp1252.txt", f"{a} Œuvre complète.\n".encode("cp1252")),
        s,
        "windows-1252, detected (issue 8)",
        kept=[probe(a), "Œuvre complète"],
    )

    a = c.good()
    data = f"{a} — fine.\n\n".encode() + b"bad \xff byte here.\n"
    c.case(
        c.file(s, "utf8_bad_byte.txt", data),
        s,
        "UTF-8 with one bad byte: repaired",
        reasons=["invalid_utf8"],
        kept=[probe(a)],
    )

    s = "text-file"
    a = c.good()
    c.case(
        c.file("text_whole", "whole.md", f"{a}\n\nMore of it.\n".encode()),
        s,
        "a whole file as one document",
        kept=[probe(a)],
    )
    c.case(
        c.file("text_whole", "too_big.txt", b"line of words\n" * (1_300_000)),
        s,
        "an 18 MB file as one document",
        reasons=["record_too_large"],
    )


def parquet_cases(c: Corpus) -> None:
    s = "parquet"
    folder = c.root / s
    folder.mkdir(parents=True, exist_ok=True)
    a, b = c.good(), c.good()
    pq.write_table(pa.table({"text": [a, b]}), folder / "good.parquet")
    c.case(folder / "good.parquet", s, "good rows", kept=[probe(a), probe(b)])
    c.case(
        c.file(s, "corrupt.parquet", b"PAR1 this is not really parquet PAR1"),
        s,
        "bytes that are no Parquet",
        reasons=["unreadable_file"],
    )
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": [c.good() for _ in range(3)]}), buffer)
    c.case(
        c.file(s, "truncated.parquet", buffer.getvalue()[: len(buffer.getvalue()) // 2]),
        s,
        "a Parquet file cut in half",
        reasons=["unreadable_file"],
    )
    a = c.good()
    pq.write_table(pa.table({"text": [None, a]}), folder / "null_text.parquet")
    c.case(
        folder / "null_text.parquet", s, "a null text", reasons=["missing_text"], kept=[probe(a)]
    )
    pq.write_table(pa.table({"text": [1, 2]}), folder / "int_text.parquet")
    c.case(folder / "int_text.parquet", s, "a text column of numbers", reasons=["non_string_text"])
    a = c.good()
    pq.write_table(pa.table({"text": ["y" * (20 << 20), a]}), folder / "huge_cell.parquet")
    c.case(
        folder / "huge_cell.parquet",
        s,
        "a 20 MB cell",
        reasons=["record_too_large"],
        kept=[probe(a)],
    )


def warc_cases(c: Corpus) -> None:
    s = "warc"

    def good_record(uri: str) -> tuple[bytes, str]:
        text = c.good()
        return warc_record(uri, page(text).encode()), probe(text)

    records, probes = zip(*(good_record(f"http://good.example/{i}") for i in range(3)), strict=True)
    c.case(
        c.file(s, "good.warc.gz", b"".join(gzip.compress(r) for r in (warcinfo(), *records))),
        s,
        "good records, one gzip member each",
        kept=list(probes),
    )

    # issue 6: a Content-Length longer than the record swallows the next one
    (r1, p1), (r2, p2), (r3, p3) = (good_record(f"http://long.example/{i}") for i in range(3))
    swallowing = warc_record(
        "http://long.example/bad",
        page(c.good()).encode(),
        length_delta=700,
        extra=(HEADER_MARKER + "\r\n").encode(),
    )
    c.case(
        c.file(s, "long_content_length.warc", r1 + swallowing + r2 + r3),
        s,
        "a Content-Length longer than its record (issue 6)",
        reasons=["corrupt_warc_record"],
        kept=[p1, p2, p3],
        absent=[HEADER_MARKER, "WARC-Target-URI"],
    )

    (r1, p1), (r2, p2) = (good_record(f"http://short.example/{i}") for i in range(2))
    short = warc_record("http://short.example/bad", page(c.good()).encode(), length_delta=-200)
    c.case(
        c.file(s, "short_content_length.warc", r1 + short + r2),
        s,
        "a Content-Length shorter than its record",
        reasons=["corrupt_warc_record"],
        kept=[p1, p2],
        absent=["WARC-Type: response"],
    )

    # issue 7: one corrupt gzip member, two good records before and two after
    pairs = [good_record(f"http://member.example/{i}") for i in range(5)]
    members = [gzip.compress(r) for r, _ in pairs]
    broken = bytearray(members[2])
    for i in range(40, 80):
        broken[i] ^= 0x5A
    c.case(
        c.file(s, "corrupt_member.warc.gz", b"".join(members[:2] + [bytes(broken)] + members[3:])),
        s,
        "one corrupt gzip member in five (issue 7)",
        reasons=["corrupt_gzip"],
        kept=[p for i, (_, p) in enumerate(pairs) if i != 2],
    )

    # issue 2: a body that decompresses to a 64 MB header line
    (r1, p1), (r2, p2) = (good_record(f"http://header.example/{i}") for i in range(2))
    huge = b"WARC/1.0\r\nWARC-Type: response\r\nX-Junk: " + b"A" * 64_000_000 + b"\r\n\r\n"
    c.case(
        c.file(s, "huge_header_line.warc.gz", gzip.compress(r1 + huge + r2, 6)),
        s,
        "a 64 MB header line (issue 2)",
        reasons=["corrupt_warc_record"],
        kept=[p1, p2],
    )

    (r1, p1), (r2, _) = (good_record(f"http://cut.example/{i}") for i in range(2))
    whole = gzip.compress(r1) + gzip.compress(r2 + random_bytes(50_000, 5))
    c.case(
        c.file(s, "truncated.warc.gz", whole[: len(whole) - 20_000]),
        s,
        "a gzip cut short",
        reasons=["truncated_gzip"],
        kept=[p1],
    )

    (r1, p1), (r2, p2) = (good_record(f"http://nolen.example/{i}") for i in range(2))
    c.case(
        c.file(s, "missing_headers.warc", r1 + b"WARC/1.0\r\nWARC-Type: response\r\n\r\n" + r2),
        s,
        "a record without Content-Length",
        reasons=["corrupt_warc_record"],
        kept=[p1, p2],
    )

    (r1, p1), (r2, p2) = (good_record(f"http://garbage.example/{i}") for i in range(2))
    c.case(
        c.file(s, "garbage_between.warc", r1 + random_bytes(3000, 6) + b"\r\n" + r2),
        s,
        "garbage between records",
        reasons=["corrupt_warc_record"],
        kept=[p1, p2],
    )

    (r1, p1), (r2, p2) = (good_record(f"http://version.example/{i}") for i in range(2))
    bad = warc_record("http://version.example/x", b"<p>x</p>").replace(b"WARC/1.0", b"WARC/9.9", 1)
    c.case(
        c.file(s, "bad_version.warc", r1 + bad + r2),
        s,
        "a WARC/9.9 header",
        reasons=["corrupt_warc_record"],
        kept=[p1, p2],
    )

    (r1, p1), _ = good_record("http://binary.example/1"), None
    binary = warc_record("http://binary.example/png", png_bytes())
    c.case(
        c.file(s, "binary_page.warc", r1 + binary),
        s,
        "binary bytes sent as text/html",
        reasons=["binary_file"],
        kept=[p1],
    )

    (r1, p1), _ = good_record("http://deep.example/1"), None
    deep = warc_record("http://deep.example/deep", b"<html><body>" + b"<div>" * 100_000 + b"deep")
    c.case(
        c.file(s, "deep_page.warc", r1 + deep),
        s,
        "a page nested 100,000 deep (issue 1)",
        reasons=["too_deeply_nested"],
        kept=[p1],
    )

    (r1, p1), _ = good_record("http://bomb.example/1"), None
    bomb_body = gzip_bomb(512 << 20, b"<html><body><p>")
    bomb = warc_record(
        "http://bomb.example/bomb", bomb_body, http_extra=b"Content-Encoding: gzip\r\n"
    )
    c.case(
        c.file(s, "body_bomb.warc.gz", gzip.compress(r1) + gzip.compress(bomb)),
        s,
        "an HTTP body that inflates to 512 MB",
        reasons=["page_too_large"],
        kept=[p1],
    )

    (r1, p1), _ = good_record("http://types.example/1"), None
    other = warc_record("http://types.example/img", png_bytes(), content_type=b"image/png")
    missing = warc_record("http://types.example/404", b"<p>gone</p>", status=b"404 Not Found")
    c.case(
        c.file(s, "skipped_records.warc", warcinfo() + r1 + other + missing),
        s,
        "an image and a 404 (skipped, counted)",
        kept=[p1],
    )

    text = c.good()
    same = page(text).encode()
    twice = warc_record("http://dup.example/", same, record_id="urn:uuid:same") * 2
    c.case(
        c.file(s, "duplicate_record_ids.warc", twice),
        s,
        "the same record twice (same id, same page): dedup keeps one",
        kept=[probe(text)],
    )

    c.case(c.file(s, "zero_bytes.warc", b""), s, "an empty WARC", reasons=["empty_file"])

    text = c.good()
    body = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n" + page(text).encode()
    arc = (
        b"filedesc://hostile.arc 0.0.0.0 20240501120000 text/plain 9\n1 0 test\n\n"
        + f"http://arc.example/1 1.2.3.4 20240501120000 text/html {len(body)}\n".encode()
        + body
        + b"\n"
        + b"http://arc.example/bad 1.2.3.4 20240501120000 text/html 99999\n<html>cut"
        + b"\n"
    )
    c.case(
        c.file(s, "broken.arc", arc),
        s,
        "an ARC record whose length runs past the end",
        reasons=["corrupt_warc_record"],
        kept=[probe(text)],
    )


def html_cases(c: Corpus) -> None:
    s = "html"
    for i in range(2):
        text = c.good()
        c.case(
            c.file(s, f"good_{i}.html", page(text).encode()), s, "a good page", kept=[probe(text)]
        )

    c.case(
        c.file(
            s, "deep_100k.html", b"<html><body>" + b"<div>" * 100_000 + b"x" + b"</div>" * 100_000
        ),
        s,
        "100,000 nested tags, closed (issue 1)",
        reasons=["too_many_tags"],
    )
    c.case(
        c.file(s, "deep_100k_open.html", b"<html><body>" + b"<div>" * 100_000 + b"x"),
        s,
        "100,000 nested tags, never closed (issue 1)",
        reasons=["too_deeply_nested"],
    )
    c.case(
        c.file(
            s, "deep_stray_ends.html", b"<html><body>" + b"</div>" * 5000 + b"<div>" * 5000 + b"x"
        ),
        s,
        "stray end tags, then deep nesting",
        reasons=["too_deeply_nested"],
    )
    # 1,990 nested divs around 95,000 short paragraphs: resiliparse's main-content pass takes
    # about 30 s here, 15 times the limit, so that a faster machine cannot finish it in time.
    slow = (
        b"<html><body>"
        + b"<div>" * 1990
        + b"<p>word word word word word</p>" * 95_000
        + b"</body></html>"
    )
    c.case(
        c.file(s, "slow_in_c.html", slow),
        s,
        "under every cap but seconds in C: the worker is killed (issue 1)",
        reasons=["extraction_timeout"],
    )
    c.case(
        c.file(s, "many_tags.html", b"<html><body>" + b"<a>x</a>" * 1_200_000),
        s,
        "1.2 million tags (9.6 MB)",
        reasons=["too_many_tags"],
    )
    c.case(
        c.file(s, "png_named.html", png_bytes()),
        s,
        "a PNG named .html (issue 9)",
        reasons=["binary_file"],
    )
    c.case(
        c.file(
            s,
            "script_only.html",
            b"<html><body><script>" + b"var x = 1;" * 500 + b"</script></body></html>",
        ),
        s,
        "a page with only a script",
        reasons=["no_extractable_text"],
    )
    text = c.good()
    c.case(
        c.file(s, "utf16_bom.html", page(text + " Éclair.").encode("utf-16")),
        s,
        "UTF-16 with a BOM",
        kept=[probe(text)],
    )
    text = c.good()
    c.case(
        c.file(s, "utf16_no_bom.html", page(text).encode("utf-16-le")),
        s,
        "UTF-16 without a BOM",
        kept=[probe(text)],
    )
    c.case(c.file(s, "empty.html", b""), s, "an empty file", reasons=["empty_file"])
    c.case(
        c.file(s, "bomb.html.gz", gzip_bomb(1 << 30, b"<html><body><p>", b" ")),
        s,
        "a gzip bomb named .html.gz",
        reasons=["page_too_large"],
    )
    text = c.good()
    latin = page(text + " Garçon, où est la gare?").replace(
        "<head>", '<head><meta charset="iso-8859-1">'
    )
    c.case(
        c.file(s, "latin1_meta.html", latin.encode("latin-1")),
        s,
        "a declared latin-1 page",
        kept=[probe(text), "Garçon, où est la gare"],
    )
    text = c.good()
    c.case(
        c.file(s, "nul_sprinkled.html", page(text.replace(". ", ".\x00 ", 2)).encode()),
        s,
        "a few NUL bytes in a page",
        kept=[probe(text)],
    )


def feed_cases(c: Corpus) -> None:
    s = "feed"

    def rss(items: str) -> bytes:
        return (
            '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
            f"<title>Hostile news</title>{items}</channel></rss>"
        ).encode()

    def item(text: str, n: int) -> str:
        return (
            f"<item><title>Item {n}</title><link>http://feed.example/{n}</link>"
            f"<description><![CDATA[<p>{text}</p>]]></description></item>"
        )

    a, b = c.good(), c.good()
    c.case(
        c.file(s, "good.rss", rss(item(a, 1) + item(b, 2))),
        s,
        "a good feed",
        kept=[probe(a), probe(b)],
    )

    deep = (
        b'{"version": "https://jsonfeed.org/version/1.1", "items": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}"
    )
    c.case(
        c.file(s, "deep_feed.json", deep),
        s,
        "a JSON Feed nested 100,000 deep (issue 5)",
        reasons=["malformed_feed"],
    )
    a = c.good()
    odd = {
        "version": "1.1",
        "title": {"not": "a string"},
        "items": [
            {"id": 1, "url": ["x"], "title": {"a": 1}, "content_html": {"b": 2}},
            {"id": "2", "url": "http://feed.example/json", "content_text": a},
            "not an item",
        ],
    }
    c.case(
        c.file(s, "odd_types.json", json.dumps(odd).encode()),
        s,
        "a JSON Feed with fields of the wrong types",
        reasons=["empty_text", "malformed_feed_item"],
        kept=[probe(a)],
    )
    a = c.good()
    deep_xml = rss(
        item(a, 1)
        + "<item><title>deep</title><description>"
        + "<b>" * 100_000
        + "x"
        + "</b>" * 100_000
        + "</description></item>"
    )
    c.case(c.file(s, "deep_xml.rss", deep_xml), s, "100,000 nested XML elements in an item")
    laughs = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + "".join(
            f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
            for i in range(1, 10)
        )
        + ']><rss version="2.0"><channel><title>x</title><item><title>&lol9;</title>'
        "<description>laughs</description></item></channel></rss>"
    )
    c.case(c.file(s, "billion_laughs.rss", laughs.encode()), s, "an XML entity bomb")
    xxe = (
        f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file://{c.out / "outside" / "secret.jsonl"}">]>'
        '<rss version="2.0"><channel><title>x</title><item><title>t</title>'
        "<description>&xxe;</description></item></channel></rss>"
    )
    c.case(
        c.file(s, "xxe.rss", xxe.encode()),
        s,
        "an external entity naming the secret file",
        absent=[SECRET],
    )
    c.case(c.file(s, "png_named.rss", png_bytes()), s, "a PNG named .rss", reasons=["binary_file"])
    c.case(c.file(s, "empty.xml", b""), s, "an empty file", reasons=["empty_file"])
    full = gzip.compress(rss("".join(item(f"filler {i} " * 50, i) for i in range(200))))
    c.case(
        c.file(s, "truncated.rss.gz", full[: len(full) // 2]),
        s,
        "a gzip cut in half",
        reasons=["truncated_gzip"],
    )
    c.case(
        c.file(s, "not_a_feed.xml", b"<html><body><h1>Moved</h1><a href='x'>here</b></body>"),
        s,
        "an HTML page named .xml",
        reasons=["malformed_feed"],
    )


def build(out: Path) -> list[Case]:
    """Write the corpus, its config and cases.json into `out`; return the cases."""
    out = Path(out)
    (out / "outside").mkdir(parents=True, exist_ok=True)
    secret_line = json.dumps({"text": f"{SECRET} " * 40 + "A secret paragraph of words."})
    (out / "outside" / "secret.jsonl").write_text(secret_line + "\n", encoding="utf-8")
    corpus = Corpus(out)
    for make in (
        jsonl_cases,
        csv_cases,
        text_cases,
        parquet_cases,
        warc_cases,
        html_cases,
        feed_cases,
    ):
        make(corpus)
    (out / "cases.json").write_text(
        json.dumps([asdict(case) for case in corpus.cases], indent=1, ensure_ascii=False),
        encoding="utf-8",
    )
    (out / "config.yaml").write_text(json.dumps(config(out), indent=1), encoding="utf-8")
    return corpus.cases


def config(out: Path) -> dict:
    """ingest -> clean -> dedup over the corpus (YAML is a superset of this JSON)."""
    return {
        "name": "hostile",
        "workdir": str(out / "work"),
        "sources": [
            {"type": "jsonl", "name": "jsonl", "path": "corpus/jsonl"},
            {
                "type": "jsonl",
                "name": "jsonl-ids",
                "path": "corpus/jsonl_ids",
                "fields": {"id": "id"},
            },
            {"type": "jsonl", "name": "globbed", "path": "corpus/globbed/**/*.jsonl"},
            {"type": "csv", "name": "csv", "path": "corpus/csv"},
            {"type": "csv", "name": "csv-tab", "path": "corpus/csv_tab", "delimiter": "\t"},
            {"type": "text", "name": "text", "path": "corpus/text", "split": "paragraphs"},
            {"type": "text", "name": "text-file", "path": "corpus/text_whole"},
            {"type": "parquet", "name": "parquet", "path": "corpus/parquet"},
            {"type": "warc", "name": "warc", "path": "corpus/warc"},
            {"type": "html", "name": "html", "path": "corpus/html"},
            {"type": "feed", "name": "feed", "path": "corpus/feed"},
        ],
        "ingest": {"extraction": {"timeout_seconds": TIMEOUT_SECONDS}},
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    cases = build(Path(sys.argv[1]))
    print(f"{len(cases)} inputs written to {sys.argv[1]}")
