"""Token shards: flat binary arrays of token ids with a small header.

Layout of one shard file (`train-00000.bin`, `val-00000.bin`, ...), little-endian:
a 64-byte header (magic b"LLMPTOK1", int32 version, int32 bytes per token (2 = uint16,
4 = uint32), int64 token count, zero padding), then the token ids. Documents are separated by
the end-of-text token. Readers memory-map the ids, so a shard is never loaded into RAM.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

MAGIC = b"LLMPTOK1"
VERSION = 1
HEADER_BYTES = 64
_HEADER = struct.Struct("<8siiq")


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


class TokenShardWriter:
    """Appends token ids to `<prefix>-NNNNN.bin` files of at most `tokens_per_shard` ids each."""

    def __init__(self, folder: Path, prefix: str, vocab_size: int, tokens_per_shard: int):
        self.folder = Path(folder)
        self.prefix = prefix
        self.dtype = dtype_for_vocab(vocab_size)
        self.tokens_per_shard = tokens_per_shard
        self.paths: list[Path] = []
        self.total = 0
        self._handle = None
        self._in_shard = 0

    def _open(self) -> None:
        path = self.folder / f"{self.prefix}-{len(self.paths):05d}.bin"
        self.paths.append(path)
        self._handle = path.open("wb")
        self._handle.write(b"\0" * HEADER_BYTES)  # filled in on close, once the count is known
        self._in_shard = 0

    def _close_shard(self) -> None:
        if self._handle is None:
            return
        self._handle.seek(0)
        self._handle.write(_HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, self._in_shard))
        self._handle.close()
        self._handle = None

    def write(self, ids: np.ndarray | list[int]) -> None:
        ids = np.asarray(ids, dtype=self.dtype)
        while len(ids):
            if self._handle is None:
                self._open()
            room = self.tokens_per_shard - self._in_shard
            chunk, ids = ids[:room], ids[room:]
            self._handle.write(chunk.tobytes())
            self._in_shard += len(chunk)
            self.total += len(chunk)
            if self._in_shard >= self.tokens_per_shard:
                self._close_shard()

    def close(self) -> None:
        self._close_shard()

    def __enter__(self) -> TokenShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_header(path: Path) -> tuple[np.dtype, int]:
    with Path(path).open("rb") as handle:
        raw = handle.read(HEADER_BYTES)
    if len(raw) < _HEADER.size:
        raise ValueError(f"{path}: too short to be a token shard")
    magic, version, itemsize, count = _HEADER.unpack(raw[: _HEADER.size])
    if magic != MAGIC:
        raise ValueError(f"{path}: not a token shard (magic {magic!r})")
    if version != VERSION:
        raise ValueError(f"{path}: token shard version {version}, this code reads {VERSION}")
    if itemsize not in (2, 4):
        raise ValueError(f"{path}: bad token width {itemsize}")
    return np.dtype(np.uint16 if itemsize == 2 else np.uint32), count


def load_tokens(path: Path) -> np.memmap:
    """The ids of one shard, memory-mapped read-only."""
    dtype, count = read_header(path)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


def split_paths(folder: Path, split: str) -> list[Path]:
    return sorted(Path(folder).glob(f"{split}-*.bin"))
