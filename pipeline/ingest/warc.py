"""WARC and ARC files, record by record: read linearly, bounded, and resynchronised after damage.

In: a binary stream of a WARC or ARC file (already gunzipped, member by member: see
files.GzipMembers) and its display name. Out: `WarcRecord`s (offset in the uncompressed stream,
type, headers, the block) interleaved with `ReadProblem`s for what could not be read.

Bounds: a header line over MAX_HEADER_LINE bytes or a header block over MAX_HEADER_BYTES is a
broken record, never read into memory whole; a block over `keep_bytes` is not kept (only its
first HEAD_KEEP bytes, to tell what it was) and is read past in chunks.

Resynchronisation: a record must end where its Content-Length says, with the blank lines before
the next record. When it does not (a Content-Length longer or shorter than the record, a garbled
header, a gzip member lost in the middle), the record is refused as `corrupt_warc_record` and
reading goes on at the next `WARC/1.x` header line: inside the swallowed block when the length
ran past the record's end (so the next record is not lost), else further on. An ARC file
resynchronises at its next record header line the same way.

`parse_http(block)` splits an HTTP response block into status, headers and body, with the same
bounds, and decodes chunked transfer encoding and gzip/deflate/br content encoding (the output
capped, so a compressed bomb in a body costs nothing).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.ingest.readers import ReadProblem

MAX_HEADER_LINE = 64 * 1024
MAX_HEADER_BYTES = 1024 * 1024
MAX_HTTP_HEADER_BYTES = 256 * 1024
HEAD_KEEP = 64 * 1024  # what is kept of a block over the keep limit
SCAN_CHUNK = 1024 * 1024
_WARC_LINE = re.compile(rb"WARC/(\d+)\.(\d+)\r?\n")
_WARC_NEXT = re.compile(rb"\nWARC/[01]\.\d+\r?\n")
_ARC_LINE = re.compile(rb"(\S+) (\S+) (\d{12,14}) (\S*) (?:\S+ ){0,5}(\d+)\r?\n")
_ARC_NEXT = re.compile(rb"\n[a-z][a-z0-9+.-]*:\S* \S+ \d{12,14} \S* (?:\S+ ){0,5}\d+\r?\n")
_BLANK = (b"\r\n", b"\n", b"\r")


@dataclass
class WarcRecord:
    offset: int  # of its first header line, in the uncompressed stream
    format: str  # "warc" | "arc"
    rec_type: str  # warcinfo, response, request, revisit, metadata, ...
    headers: dict[str, str]  # lower-case names; the first value of a repeated name
    block: bytes  # the whole block, or its first HEAD_KEEP bytes when `complete` is False
    length: int  # the block's declared length
    complete: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def target_uri(self) -> str | None:
        uri = self.headers.get("warc-target-uri", "").strip().strip("<>")
        return uri or None


class _Stream:
    """A binary stream with a position and pushback (bytes given back are read again)."""

    def __init__(self, handle: Any):
        self.handle = handle
        self.position = 0
        self._back = b""

    def read(self, size: int) -> bytes:
        if self._back:
            data, self._back = self._back[:size], self._back[size:]
            if len(data) < size:
                data += self.handle.read(size - len(data))
        else:
            data = self.handle.read(size)
        self.position += len(data)
        return data

    def readline(self, limit: int) -> bytes:
        if self._back:
            end = self._back.find(b"\n", 0, limit)
            if end >= 0:
                line, self._back = self._back[: end + 1], self._back[end + 1 :]
            else:
                line, self._back = self._back[:limit], self._back[limit:]
                if len(line) < limit:
                    line += self.handle.readline(limit - len(line))
        else:
            line = self.handle.readline(limit)
        self.position += len(line)
        return line

    def unread(self, data: bytes) -> None:
        if data:
            self._back = data + self._back
            self.position -= len(data)


class _Broken(Exception):
    """The record at hand cannot be read. `swallowed`: bytes read after its first line, that
    the next record may start in (at `resume_at` when that is known)."""

    def __init__(self, detail: str, swallowed: bytes = b"", resume_at: int = -1):
        super().__init__(detail)
        self.detail = detail
        self.swallowed = swallowed
        self.resume_at = resume_at


def _scan(stream: _Stream, pattern: re.Pattern, carry: bytes) -> bool:
    """Read forward to the next record header line (`pattern` matches it with the newline
    before it); `carry`: the bytes just before the stream's position, searched too. True when
    the stream is then positioned at that line, False at the end of the file."""
    carry = carry[-MAX_HEADER_LINE:]
    while True:
        chunk = stream.read(SCAN_CHUNK)
        if not chunk:
            return False
        buffer = carry + chunk
        match = pattern.search(buffer)
        if match:
            stream.unread(buffer[match.start() + 1 :])
            return True
        carry = buffer[-MAX_HEADER_LINE:]


def _find_in(data: bytes, pattern: re.Pattern) -> int:
    """Where the first record header line (after a newline) starts in `data`, or -1."""
    match = pattern.search(data)
    return match.start() + 1 if match else -1


def _iso(timestamp: str) -> str:
    digits = (timestamp + "00000000000000")[:14]
    d = digits
    return f"{d[0:4]}-{d[4:6]}-{d[6:8]}T{d[8:10]}:{d[10:12]}:{d[12:14]}Z"


class WarcReader:
    """Records of one WARC or ARC stream; see the module docstring."""

    def __init__(self, handle: Any, name: str, keep_bytes: int):
        self.stream = _Stream(handle)
        self.name = name
        self.keep_bytes = keep_bytes
        self.format: str | None = None

    def _next_pattern(self) -> re.Pattern:
        return _ARC_NEXT if self.format == "arc" else _WARC_NEXT

    def __iter__(self) -> Iterator[WarcRecord | ReadProblem]:
        stream = self.stream
        while True:
            line = stream.readline(MAX_HEADER_LINE + 1)
            while line in _BLANK:
                line = stream.readline(MAX_HEADER_LINE + 1)
            if not line:
                return
            start = stream.position - len(line)
            try:
                if self.format is None:
                    self.format = "warc" if line.startswith(b"WARC/") else "arc"
                if self.format == "warc":
                    record = self._warc(line, start)
                else:
                    record = self._arc(line, start)
            except _Broken as broken:
                yield ReadProblem("corrupt_warc_record", f"{self.name}@{start}", broken.detail)
                if not self._resync(line, broken):
                    return
                continue
            yield record

    def _resync(self, line: bytes, broken: _Broken) -> bool:
        """Position the stream at the next record after a broken one whose first line was
        `line`: in the bytes it swallowed when the next record starts there, else further on."""
        pattern = self._next_pattern()
        swallowed = broken.swallowed
        found = broken.resume_at if broken.resume_at >= 0 else _find_in(swallowed, pattern)
        if found >= 0:
            self.stream.unread(swallowed[found:])
            return True
        return _scan(self.stream, pattern, line + swallowed)

    # ----------------------------------------------------------------------------- WARC

    def _headers(self, first: bytes) -> tuple[dict[str, str], bytes]:
        """The header block after the version line: lower-case name -> value; and its bytes."""
        stream = self.stream
        raw = [first]
        size = len(first)
        headers: dict[str, str] = {}
        last: str | None = None
        while True:
            line = stream.readline(MAX_HEADER_LINE + 1)
            raw.append(line)
            size += len(line)
            if not line:
                raise _Broken("the file ends inside the record's headers", b"".join(raw[1:]))
            if len(line) > MAX_HEADER_LINE and not line.endswith(b"\n"):
                raise _Broken(f"a header line over {MAX_HEADER_LINE:,} bytes", b"".join(raw[1:]))
            if size > MAX_HEADER_BYTES:
                raise _Broken(f"a header block over {MAX_HEADER_BYTES:,} bytes", b"".join(raw[1:]))
            if line in _BLANK:
                return headers, b"".join(raw)
            text = line.decode("utf-8", errors="replace").rstrip("\r\n")
            if text[:1] in (" ", "\t") and last is not None:  # a folded header line
                headers[last] += " " + text.strip()
                continue
            name, colon, value = text.partition(":")
            if not colon:
                continue  # not a header line: ignored, as warcio does
            last = name.strip().lower()
            headers.setdefault(last, value.strip())

    def _warc(self, line: bytes, start: int) -> WarcRecord:
        match = _WARC_LINE.fullmatch(line)
        if not match or match.group(1) not in (b"0", b"1"):
            raise _Broken(f"not a WARC record header: {line[:60]!r}")
        headers, header_bytes = self._headers(line)
        length_text = headers.get("content-length", "")
        if not length_text.isdigit():
            raise _Broken(
                f"no valid Content-Length ({length_text[:40]!r})", header_bytes[len(line) :]
            )
        length = int(length_text)
        block, complete = self._block(length, start)
        rec_type = headers.get("warc-type", "").lower() or "unknown"
        return WarcRecord(start, "warc", rec_type, headers, block, length, complete)

    def _block(self, length: int, start: int) -> tuple[bytes, bool]:
        """Read a record's block of `length` bytes and check that the record ends there."""
        stream = self.stream
        pattern = self._next_pattern()
        if length <= self.keep_bytes:
            block = stream.read(length)
            complete = True
            if len(block) < length:  # the file ends inside the block
                found = _find_in(block, pattern)
                if found >= 0:
                    raise _Broken(
                        f"its Content-Length ({length:,}) runs past the record's end", block
                    )
                raise _Broken(
                    f"the file ends {len(block):,} bytes into a block of {length:,} bytes"
                )
        else:
            block, complete = self._skip_block(length, pattern)
        tail = stream.read(4)
        if self._ends_well(tail):
            return block, complete
        if complete:
            detail = f"the record does not end where its Content-Length ({length:,}) says"
            if _find_in(block, pattern) >= 0:
                detail = f"its Content-Length ({length:,}) runs past the record's end"
            raise _Broken(detail, block + tail)
        raise _Broken(f"a block of {length:,} bytes that does not end where it says", tail)

    def _ends_well(self, tail: bytes) -> bool:
        """Whether the bytes after a block are the record's end: blank lines, then the next
        record or the end of the file. The next record's first bytes are given back."""
        rest = tail.lstrip(b"\r\n")
        if not rest:  # blank lines (more may follow: they are skipped), or the end
            return True
        if len(rest) == len(tail):  # no line end after the block
            return False
        if self.format == "warc":
            fits = b"WARC".startswith(rest)
        else:
            fits = rest[:1].isalnum()
        if fits:
            self.stream.unread(rest)
        return fits

    def _skip_block(self, length: int, pattern: re.Pattern) -> tuple[bytes, bool]:
        """A block over the keep limit: keep its head, read past the rest in chunks. A next
        record's header (with its WARC-Type) inside it means the length was wrong: stop there."""
        stream = self.stream
        head = stream.read(min(HEAD_KEEP, length))
        remaining = length - len(head)
        carry = head[-MAX_HEADER_LINE:]
        while remaining > 0:
            chunk = stream.read(min(SCAN_CHUNK, remaining))
            if not chunk:
                if _find_in(carry, pattern) >= 0:
                    detail = f"its Content-Length ({length:,}) runs past the record's end"
                else:
                    detail = f"the file ends inside a block of {length:,} bytes"
                raise _Broken(detail, carry)
            remaining -= len(chunk)
            buffer = carry + chunk
            for match in pattern.finditer(buffer):
                found = match.start() + 1
                if self.format == "arc" or b"\nWARC-Type:" in buffer[found : found + 4096]:
                    raise _Broken(
                        f"its Content-Length ({length:,}) runs past the record's end",
                        buffer,
                        found,
                    )
            carry = buffer[-MAX_HEADER_LINE:]
        return head, False

    # ------------------------------------------------------------------------------ ARC

    def _arc(self, line: bytes, start: int) -> WarcRecord:
        match = _ARC_LINE.fullmatch(line)
        if not match:
            raise _Broken(f"not an ARC record header: {line[:60]!r}")
        url, ip, date, content_type, length_text = (
            g.decode("utf-8", "replace") for g in match.groups()
        )
        length = int(length_text)
        block, complete = self._block(length, start)
        rec_type = "warcinfo" if url.startswith("filedesc://") else "response"
        headers = {
            "warc-type": rec_type,
            "warc-target-uri": url,
            "warc-ip-address": ip,
            "warc-date": _iso(date),
            "content-type": content_type,
            "content-length": length_text,
        }
        return WarcRecord(start, "arc", rec_type, headers, block, length, complete)


# ---------------------------------------------------------------------------------- HTTP


@dataclass
class HttpResponse:
    status: str  # "200", or "" when the status line has none
    headers: dict[str, str]
    body: bytes  # decoded (chunked, gzip/deflate/br), at most max_body + 1 bytes


class HttpError(Exception):
    pass


def _header_end(block: bytes) -> tuple[int, int]:
    """(end of the header lines, start of the body) or (-1, -1)."""
    window = block[: MAX_HTTP_HEADER_BYTES + 4]
    crlf = window.find(b"\r\n\r\n")
    lf = window.find(b"\n\n")
    candidates = [(i, i + 4) for i in [crlf] if i >= 0] + [(i, i + 2) for i in [lf] if i >= 0]
    if not candidates:
        return -1, -1
    return min(candidates)


def parse_http(block: bytes, complete: bool, max_body: int) -> HttpResponse:
    """An HTTP response block: status, headers and the decoded body (bounded)."""
    end, body_start = _header_end(block)
    if end < 0:
        if complete and len(block) <= MAX_HTTP_HEADER_BYTES:
            end, body_start = len(block), len(block)
        else:
            raise HttpError(
                f"no end of the HTTP headers in the first {MAX_HTTP_HEADER_BYTES:,} bytes"
            )
    lines = block[:end].decode("iso-8859-1").splitlines()
    if not lines:
        raise HttpError("an empty HTTP header block")
    parts = lines[0].split(None, 2)
    status = parts[1] if len(parts) > 1 and parts[0].upper().startswith("HTTP/") else ""
    if not parts or not parts[0].upper().startswith("HTTP/"):
        raise HttpError(f"not an HTTP status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers.setdefault(name.strip().lower(), value.strip())
    body = block[body_start:]
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body, max_body)
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate", "br"):
        body = _decompress(body, encoding, max_body)
    return HttpResponse(status, headers, body[: max_body + 1])


def _dechunk(body: bytes, max_body: int) -> bytes:
    """A chunked body decoded; what cannot be decoded is kept as it is (as warcio does)."""
    out = bytearray()
    position = 0
    while position < len(body) and len(out) <= max_body:
        end = body.find(b"\n", position, position + 1024)
        if end < 0:
            break
        size_text = body[position:end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            break
        if size == 0:
            return bytes(out)
        start = end + 1
        out += body[start : start + size]
        position = start + size
        if body[position : position + 2] == b"\r\n":
            position += 2
        elif body[position : position + 1] == b"\n":
            position += 1
    if not out:
        return body  # not chunked after all
    return bytes(out) + body[position:]


def _decompress(body: bytes, encoding: str, max_body: int) -> bytes:
    """A content-encoded body decoded, at most max_body + 1 bytes of it; a body that is not
    compressed after all is kept as it is; one that breaks off midway is an HttpError."""
    if encoding == "br":
        try:
            import brotli
        except ImportError:
            return body
        try:
            decoder = brotli.Decompressor()
            out = decoder.process(body[: 64 * 1024 * 1024])
            return out[: max_body + 1]
        except brotli.error as exc:
            raise HttpError(f"brotli: {exc}") from None
    wbits_options = (47,) if encoding in ("gzip", "x-gzip") else (15, -15)
    for wbits in wbits_options:
        decoder = zlib.decompressobj(wbits)
        try:
            first = decoder.decompress(body[:4096], max_body + 1)
        except zlib.error:
            continue  # not this format: try the next one, or keep the body raw
        out = bytearray(first)
        rest = decoder.unconsumed_tail + body[4096:]
        try:
            while len(out) <= max_body:
                if decoder.eof:  # a next gzip member, if any
                    rest = decoder.unused_data + rest
                    if not rest.startswith(b"\x1f\x8b"):
                        break
                    decoder = zlib.decompressobj(wbits)
                if not rest:
                    break
                out += decoder.decompress(rest, max_body + 1 - len(out))
                rest = decoder.unconsumed_tail
        except zlib.error as exc:
            raise HttpError(f"{encoding}: {exc}") from None
        return bytes(out[: max_body + 1])
    return body
