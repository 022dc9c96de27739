"""Which text encoding bytes are in, or whether they are text at all.

In: the first bytes of a file or a page (and a charset it declares, if any). Out: the codec to
decode it with, or a reason it is binary. One set of rules for every reader (text, JSONL, CSV,
HTML, feeds), as browsers do: a byte-order mark first, then a declared charset, then UTF-8 when
the bytes are UTF-8, then detection; bytes no candidate decodes become U+FFFD.

- `sniff_binary(head)`: a reason when the bytes are not text (a known file signature, NUL
  bytes that are no UTF-16/32, many control characters), else None.
- `detect_text_encoding(head)`: a `TextEncoding` for a line-based file (its codec, the length
  of its byte-order mark, whether lines can be cut at b"\\n" before decoding).
- `codec_name(label)`: a Python codec for a charset label, as browsers read labels.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

SNIFF_BYTES = 64 * 1024  # what of a file the encoding and binary checks look at

# Byte-order marks, longest first (UTF-32 LE starts with the UTF-16 LE mark).
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Signatures of common binary formats (a PDF or an image renamed .txt is no text).
SIGNATURES = (
    (b"%PDF-", "a PDF file"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", "gzip data (its name does not end in .gz)"),
    (b"BZh", "bzip2 data"),
    (b"\xfd7zXZ\x00", "xz data"),
    (b"(\xb5/\xfd", "zstd data"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x7fELF", "an ELF executable"),
    (b"PAR1", "a Parquet file"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"OggS", "Ogg media"),
    (b"ID3", "MP3 audio"),
    (b"\x00\x00\x00\x18ftyp", "MP4 media"),
    (b"\x00\x00\x00\x20ftyp", "MP4 media"),
    (b"RIFF", "RIFF media (WAV, AVI, WebP)"),
    (b"\xd0\xcf\x11\xe0", "an OLE document (old Office)"),
    (b"wOFF", "a web font"),
    (b"wOF2", "a web font"),
)
# C0 controls that text does not hold (tab, newlines, form feed, escape are text).
_CONTROL = bytes([*range(0x00, 0x09), *range(0x0E, 0x1B), *range(0x1C, 0x20), 0x7F])
CONTROL_FRACTION = 0.05  # more of the sniffed bytes than this are controls: binary
# A few NUL bytes in text are dropped; more than this (and no UTF-16/32 pattern): binary.
STRAY_NULS = 8


@dataclass(frozen=True)
class TextEncoding:
    codec: str  # a Python codec name
    bom: int = 0  # bytes of byte-order mark at the start of the file
    source: str = "utf-8"  # "bom" | "declared" | "utf-8" | "detected" | "utf-16 pattern"

    @property
    def ascii_lines(self) -> bool:
        """Whether lines can be cut at b"\\n" before decoding (not in UTF-16/32)."""
        return not self.codec.startswith(("utf-16", "utf-32"))


def codec_name(label: str | None) -> str | None:
    """A Python codec for a charset label, or None. Browsers read latin-1 and ascii labels as
    windows-1252 (WHATWG Encoding Standard); so does this."""
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    if label in ("iso-8859-1", "latin-1", "latin1", "us-ascii", "ascii"):
        label = "cp1252"
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def bom_codec(data: bytes) -> tuple[str, int] | None:
    """(codec, BOM length) when the bytes start with a byte-order mark."""
    for bom, codec in BOMS:
        if data.startswith(bom):
            return codec, len(bom)
    return None


def wide_codec(head: bytes) -> str | None:
    """UTF-16/32 without a byte-order mark, told by where its NUL bytes fall; or None."""
    return _utf16_or_32(head[:SNIFF_BYTES]) if b"\x00" in head[:SNIFF_BYTES] else None


def _utf16_or_32(head: bytes) -> str | None:
    """A BOM-less UTF-16/32 codec when the NUL bytes fall where that text would put them
    (mostly Latin text: every other byte, or three of four, is zero)."""
    sample = head[: len(head) - len(head) % 4]
    if len(sample) < 8:
        return None
    quads = len(sample) // 4
    zeros = [sample[i::4].count(0) for i in range(4)]  # NULs at each position of 4
    if min(zeros[1:]) > 0.6 * quads and zeros[0] < 0.1 * quads:
        return "utf-32-le"
    if min(zeros[:3]) > 0.6 * quads and zeros[3] < 0.1 * quads:
        return "utf-32-be"
    pairs = len(sample) // 2
    even_zero = sample[0::2].count(0)
    odd_zero = sample[1::2].count(0)
    if odd_zero > 0.6 * pairs and even_zero < 0.1 * pairs:
        return "utf-16-le"
    if even_zero > 0.6 * pairs and odd_zero < 0.1 * pairs:
        return "utf-16-be"
    return None


def sniff_binary(head: bytes) -> str | None:
    """Why the bytes are not text (a detail for the quarantine), or None when they may be."""
    head = head[:SNIFF_BYTES]
    if bom_codec(head):
        return None
    for signature, what in SIGNATURES:
        if head.startswith(signature):
            return f"the bytes are {what}"
    nuls = head.count(0)
    if nuls:
        if _utf16_or_32(head):
            return None
        if nuls > max(STRAY_NULS, len(head) // 1000):
            return f"{nuls:,} NUL bytes in the first {len(head):,} bytes"
    if head:
        controls = len(head) - len(head.translate(None, _CONTROL))
        if controls > CONTROL_FRACTION * len(head):
            return f"{controls:,} control bytes in the first {len(head):,} bytes"
    return None


def _mostly_utf8(head: bytes) -> bool:
    """Whether bytes that are not all valid UTF-8 are still UTF-8 with a few bad bytes (they
    hold valid multi-byte characters, at least a quarter as many as invalid bytes), not text in
    another encoding (where valid multi-byte UTF-8 hardly ever occurs by chance)."""
    text = head.decode("utf-8", errors="replace")
    invalid = text.count("\ufffd") - head.count(b"\xef\xbf\xbd")
    valid = sum(1 for ch in text if ord(ch) > 0x7F) - text.count("\ufffd")
    return valid > 0 and 4 * valid >= invalid


THIN_EVIDENCE = 32  # fewer non-ASCII bytes than this: too few to tell legacy encodings apart


def legacy_codec(head: bytes) -> str | None:
    """The encoding of text that is not UTF-8: detected (resiliparse) when there are enough
    non-ASCII bytes to tell encodings apart; with a handful (English with a few accented
    letters) any Latin guess is a coin toss, and windows-1252 is what such text mostly is
    (and what browsers fall back to)."""
    non_ascii = len(head) - len(head.translate(None, _HIGH_BYTES))
    if non_ascii < THIN_EVIDENCE:
        try:
            head.decode("cp1252")
            return "cp1252"
        except UnicodeDecodeError:
            pass
    from resiliparse.parse.encoding import detect_encoding

    return codec_name(detect_encoding(head))


_HIGH_BYTES = bytes(range(0x80, 0x100))
_detect = legacy_codec


def detect_text_encoding(head: bytes, declared: str | None = None) -> TextEncoding:
    """The encoding of a line-based file from its first bytes: BOM, declared, UTF-8 (also a
    UTF-8 file with a few bad bytes, which are replaced line by line), BOM-less UTF-16/32,
    detection; UTF-8 when nothing else fits."""
    head = head[:SNIFF_BYTES]
    bom = bom_codec(head)
    if bom:
        return TextEncoding(bom[0], bom[1], "bom")
    codec = codec_name(declared)
    if codec:
        return TextEncoding(codec, 0, "declared")
    if b"\x00" in head:
        wide = _utf16_or_32(head)
        if wide:
            return TextEncoding(wide, 0, "utf-16 pattern")
    try:
        # A multi-byte character cut by the end of the sample is no error.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        return TextEncoding("utf-8")
    except UnicodeDecodeError:
        pass
    if _mostly_utf8(head):
        return TextEncoding("utf-8")
    detected = _detect(head)
    if detected and detected != "utf-8":
        try:
            codecs.getincrementaldecoder(detected)().decode(head, final=False)
            return TextEncoding(detected, 0, "detected")
        except (UnicodeDecodeError, LookupError):
            pass
    return TextEncoding("utf-8")


def charset_from_content_type(content_type: str | None) -> str | None:
    """The charset parameter of a Content-Type header value."""
    if not content_type:
        return None
    match = re.search(r"charset\s*=\s*([^\s;]+)", content_type, re.I)
    return match.group(1) if match else None
