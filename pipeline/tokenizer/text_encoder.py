"""Text to token ids and back, losslessly, with the fastest encoder that gives the same ids.

In: a `tokenizer.json` (Hugging Face `tokenizers` format). Out: a `TextEncoder`, whose
`encode_batch(texts)` gives each text's ids and `decode(ids)` the text back.

- Lossless: `decode(encode(text)) == valid_unicode(text)` for every Python string, and
  `valid_unicode(text) is text` for every string that UTF-8 can hold. Python strings may hold
  surrogate code points, which no UTF-8 text can: a high surrogate followed by a low one becomes
  the character the pair encodes, and each lone surrogate becomes U+FFFD (what a UTF-16 decoder
  does, and what tiktoken does too).
- Ordinary text only: a document containing the string "<|endoftext|>" is encoded as the bytes of
  that string, never as the control token, so text can never forge a document boundary.
- Two backends with the same ids: `tokenizers` (`encode_batch_fast`, Rust threads) and
  `tiktoken`, built from the same tokenizer: a byte-level BPE's ids are tiktoken's ranks and its
  pre-tokenizer regex is tiktoken's pattern. tiktoken encodes about 4x faster (see bench/).
  `tiktoken_encoding` returns None, with the reason, for a tokenizer it cannot express.
- The algorithms differ in one corner: tiktoken merges any adjacent pair whose concatenation is a
  token, `tokenizers` only the learned merge pairs. On a tokenizer trained here the two agree (the
  benchmark compares every document of the news corpus), but a tokenizer from elsewhere need not.
  So the shards stage also encodes a fixed sample of documents with `tokenizers`
  (`encode_batch_with_tokenizers`) and falls back to it when any ids differ.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"

# GPT-2's pattern, for tokenizers whose ByteLevel pre-tokenizer splits with its built-in regex.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

Backend = Literal["tokenizers", "tiktoken"]


class EncoderMismatch(RuntimeError):
    """tiktoken and `tokenizers` gave different ids for the same text."""


def valid_unicode(text: str) -> str:
    """`text` itself when UTF-8 can hold it; else with its surrogates resolved (see module doc)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def tokenizer_file(path: Path) -> Path:
    """`path` itself, or the `tokenizer.json` inside the folder `path`."""
    path = Path(path)
    return path / TOKENIZER_FILE if path.is_dir() else path


def load_tokenizer(path: Path) -> Tokenizer:
    """A tokenizer from `tokenizer.json`, or from a folder holding one."""
    return Tokenizer.from_file(str(tokenizer_file(path)))


# ------------------------------------------------------------------------------- tiktoken


def _byte_decoder() -> dict[str, int]:
    """The byte-level alphabet back to bytes: GPT-2's printable stand-ins for the 256 bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in chars:
            chars[byte] = chr(256 + shifted)
            shifted += 1
    return {char: byte for byte, char in chars.items()}


def _pretokenizer_pattern(spec: dict[str, Any] | None) -> tuple[str | None, str]:
    """The regex a byte-level pre-tokenizer splits with, or None and why not."""
    if spec is None:
        return None, "no pre-tokenizer"
    if spec.get("type") == "ByteLevel":
        if spec.get("add_prefix_space") or not spec.get("use_regex", True):
            return None, "ByteLevel pre-tokenizer with a prefix space or without its regex"
        return GPT2_PATTERN, ""
    steps = spec.get("pretokenizers", []) if spec.get("type") == "Sequence" else []
    if len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel":
        split, byte_level = steps
        if (
            "Regex" not in split.get("pattern", {})
            or split.get("behavior") != "Isolated"
            or split.get("invert")
            or byte_level.get("add_prefix_space")
            or byte_level.get("use_regex", True)
        ):
            return (
                None,
                "Split + ByteLevel pre-tokenizer with other settings than isolate, no regex",
            )
        return split["pattern"]["Regex"], ""
    return None, f"pre-tokenizer {spec.get('type')!r} is not a byte-level regex split"


def tiktoken_encoding(path: Path) -> tuple[Any | None, str]:
    """A `tiktoken.Encoding` with the same vocabulary and pre-tokenizer, or (None, reason)."""
    try:
        import tiktoken
    except ImportError:
        return None, "tiktoken is not installed"
    spec = json.loads(tokenizer_file(path).read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return None, f"model {model.get('type')!r} is not BPE"
    if model.get("dropout") or model.get("byte_fallback") or model.get("unk_token"):
        return None, "BPE with dropout, byte fallback or an unknown token"
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return None, "BPE with subword prefixes or suffixes"
    if spec.get("normalizer") is not None:
        return None, "the tokenizer has a normalizer"
    pattern, reason = _pretokenizer_pattern(spec.get("pre_tokenizer"))
    if pattern is None:
        return None, reason
    special = {t["content"]: t["id"] for t in spec.get("added_tokens") or []}
    to_byte = _byte_decoder()
    ranks: dict[bytes, int] = {}
    for token, token_id in model["vocab"].items():
        if token in special:
            continue
        if any(char not in to_byte for char in token):
            return None, f"vocabulary entry {token!r} is not byte-level"
        ranks[bytes(to_byte[char] for char in token)] = token_id
    if sum(len(token) == 1 for token in ranks) != 256:
        return None, "the vocabulary lacks some of the 256 byte tokens"
    try:
        encoding = tiktoken.Encoding(
            "llmpipe", pat_str=pattern, mergeable_ranks=ranks, special_tokens=special
        )
    except Exception as exc:  # tiktoken rejects, e.g., a regex its engine cannot compile
        return None, f"tiktoken refused it: {exc}"
    return encoding, ""


# ------------------------------------------------------------------------------ the encoder


class TextEncoder:
    """Ordinary text to ids with `tokenizers` or tiktoken; ids to text with `tokenizers`.

    `backend="auto"` takes tiktoken when the tokenizer can be expressed in it. `threads`: the
    threads tiktoken encodes with (`tokenizers` sizes its own pool, see RAYON_NUM_THREADS).
    """

    def __init__(
        self,
        path: Path,
        backend: Literal["auto", "tokenizers", "tiktoken"] = "auto",
        threads: int | None = None,
    ):
        self.path = tokenizer_file(path)
        self.tokenizer = load_tokenizer(self.path)
        # Special-token strings inside a text are text: see the module docstring.
        self.tokenizer.encode_special_tokens = True
        # One more than the largest id (ids need not be dense in a tokenizer from elsewhere).
        self.vocab_size = max(self.tokenizer.get_vocab(with_added_tokens=True).values()) + 1
        self.threads = max(1, threads or os.cpu_count() or 1)
        self._tiktoken = None
        self._pool: ThreadPoolExecutor | None = None
        self.why_not_tiktoken = "not asked for"
        if backend != "tokenizers":
            self._tiktoken, self.why_not_tiktoken = tiktoken_encoding(self.path)
            if self._tiktoken is None and backend == "tiktoken":
                raise ValueError(
                    f"{self.path}: cannot encode with tiktoken: {self.why_not_tiktoken}"
                )
        self.backend: Backend = "tiktoken" if self._tiktoken is not None else "tokenizers"

    def token_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """The ids of each text (see the module docstring: lossless, ordinary text)."""
        if self._tiktoken is None:
            return self.encode_batch_with_tokenizers(texts)
        # tiktoken resolves surrogates itself, by the same rule as valid_unicode
        encode = self._tiktoken.encode_ordinary
        if self.threads == 1 or len(texts) < 2:
            return [encode(text) for text in texts]
        # A few chunks per thread rather than tiktoken's encode_ordinary_batch, which makes one
        # future per text: 40% less CPU for the same ids (tiktoken releases the GIL per text).
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tiktoken")
        step = -(-len(texts) // (self.threads * 4))
        chunks = [texts[i : i + step] for i in range(0, len(texts), step)]
        parts = self._pool.map(lambda chunk: [encode(text) for text in chunk], chunks)
        return [ids for part in parts for ids in part]

    def encode_batch_with_tokenizers(self, texts: Sequence[str]) -> list[list[int]]:
        """The `tokenizers` ids whatever the backend: the reference tiktoken is checked against."""
        try:
            encodings = self.tokenizer.encode_batch_fast(list(texts))
        except TypeError:  # a string with surrogates: see valid_unicode
            encodings = self.tokenizer.encode_batch_fast([valid_unicode(t) for t in texts])
        return [encoding.ids for encoding in encodings]

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first position where two id lists differ (or where the shorter ends); None if equal."""
    if list(a) == list(b):
        return None
    return next(
        (k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def cached_encoder(path: str, backend: str, threads: int) -> TextEncoder:
    """One encoder per process, file version and setting, reused across units of work."""
    stat = Path(path).stat()  # a file rewritten in place gets a new encoder
    return _cached_encoder(str(path), stat.st_mtime_ns, stat.st_size, backend, threads)


@lru_cache(maxsize=4)
def _cached_encoder(path: str, mtime_ns: int, size: int, backend: str, threads: int) -> TextEncoder:
    return TextEncoder(Path(path), backend, threads)  # type: ignore[arg-type]
