"""Units of work for ingest: what a `Unit` is, and the splitting of large line files.

A unit is what one worker reads on its own: one record file; a byte range of a large
uncompressed JSONL file (cut at line ends, with the number of its first line, so locators and
ids are the same as reading the file whole); one WARC file; a group of HTML or feed files; one
data file, or the whole dataset, of a Hugging Face source. A source that matches no files is a
unit too, one that only reports its problem, so everything keeps the order of the config.

Each source's kind (kinds.py) plans its units. The list depends on the sources, their files
and `split_bytes` only, never on the number of workers; units are numbered in order and the merge step concatenates their outputs in that
order, so the stage's output is the same for any executor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.ingest.encoding import SNIFF_BYTES, detect_text_encoding, sniff_binary
from pipeline.ingest.files import Skipped, file_name, file_size, is_url, open_raw
from pipeline.ingest.readers import ByteSpan, ReadProblem

SCAN_BLOCK = 1 << 20


@dataclass(frozen=True)
class Unit:
    source_index: int
    files: tuple[tuple[str, Any], ...] = ()  # (display name, path or URL)
    span: ByteSpan | None = None
    hf_mode: str | None = None  # "disk" | "files" | "hub" for hf sources
    problem: ReadProblem | None = None  # the source matched nothing: report it
    refusals: tuple[ReadProblem, ...] = ()  # entries the source's listing passed over


def refusal_unit(index: int, skipped: list[Skipped]) -> list[Unit]:
    """A unit that only reports what a source's listing skipped (loops, links out of its root,
    FIFOs ...): each is quarantined with its reason, none is read."""
    if not skipped:
        return []
    return [Unit(index, refusals=tuple(ReadProblem(s.reason, s.name, s.detail) for s in skipped))]


def splittable(file: Any, split_bytes: int) -> bool:
    """A local, uncompressed line file over split_bytes whose lines can be cut at b"\n" (not
    binary, not UTF-16/32). A file that cannot be read now is read whole (and reported then)."""
    if is_url(file) or file_name(file).lower().endswith(".gz"):
        return False
    try:
        if file_size(file) <= split_bytes:
            return False
        with open_raw(file) as handle:
            head = handle.read(SNIFF_BYTES)
    except OSError:
        return False
    return sniff_binary(head) is None and detect_text_encoding(head).ascii_lines


def split_line_file(file: Path, split_bytes: int) -> list[ByteSpan]:
    """Byte ranges of about `split_bytes`, each starting at a line start, with line numbers."""
    size = file.stat().st_size
    cuts = [0]
    with open_raw(file) as handle:
        while cuts[-1] + split_bytes < size:
            handle.seek(cuts[-1] + split_bytes - 1)
            cut = size
            while True:  # to the end of the line that the cut falls in, a block at a time
                block = handle.read(SCAN_BLOCK)
                if not block:
                    break
                newline = block.find(b"\n")
                if newline >= 0:
                    cut = handle.tell() - len(block) + newline + 1
                    break
            if cut >= size:
                break
            cuts.append(cut)
    spans = [ByteSpan(a, b, 0) for a, b in zip(cuts, [*cuts[1:], size], strict=True)]
    return _number_spans(file, spans)


def _number_spans(file: Path, spans: list[ByteSpan]) -> list[ByteSpan]:
    """Each span's first line number: one pass counts the newlines before each start
    (bytes.count runs at memory speed)."""
    numbered = []
    line, position = 1, 0
    with open_raw(file) as handle:
        for span in spans:
            while position < span.start:
                block = handle.read(min(SCAN_BLOCK, span.start - position))
                if not block:
                    break
                line += block.count(b"\n")
                position += len(block)
            numbered.append(ByteSpan(span.start, span.end, line))
    return numbered
