"""Token shards split by position (`shards.split: position`), as nanoGPT splits a text file.

In: a folder of document shards, a `tokenizer.json` and a `ShardsConfig`.
Out, in `out_dir`: `train-*.bin` with the first (1 - val_fraction) of the token stream and
`val-*.bin` with the rest (format of `pipeline.tokenizer.token_shards`), and a manifest body
with the same count and stat names as the hash split's (`pipeline.tokenizer.encode`).

The stream is every document in order (shard order, then row order: the order ingest read
them), each followed by the end-of-text id. The cut falls at token int(N * (1 - val_fraction)),
inside a document if need be: for one long text (a `text` source with `split: file`, such as
Tiny Shakespeare) the last 10% of its characters are the validation text, as in nanoGPT's
`prepare.py`. That document then counts in both splits' document counts. Use it for a single
continuous source; for a corpus of documents the hash split keeps each document on one side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from pipeline.config import ShardsConfig
from pipeline.documents import iter_batches
from pipeline.special_tokens import EOT_TOKEN
from pipeline.tokenizer.token_shards import TokenShardWriter, dtype_for_vocab, split_paths

COPY_CHUNK_TOKENS = 1 << 22


def write_position_split_shards(
    docs_dir: Path, tokenizer_path: Path, out_dir: Path, cfg: ShardsConfig
) -> dict[str, Any]:
    """Encode the documents in order and cut the stream into train and val by position."""
    docs_dir, out_dir = Path(docs_dir), Path(out_dir)
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    eot_id = tokenizer.token_to_id(EOT_TOKEN)
    if eot_id is None:
        raise ValueError(f"{tokenizer_path}: tokenizer has no {EOT_TOKEN} token")
    tokenizer.encode_special_tokens = True  # a literal "<|endoftext|>" in a text is just text
    vocab_size = tokenizer.get_vocab_size()
    dtype = dtype_for_vocab(vocab_size)

    out_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):  # shards of an earlier, interrupted run
        for stale in split_paths(out_dir, split):
            stale.unlink()
    stream_path = out_dir / ".stream.bin"
    ends: list[int] = []  # token offset where each document (with its eot) ends
    doc_bytes: list[int] = []
    total = 0
    with stream_path.open("wb") as stream:
        for batch in iter_batches(docs_dir, batch_size=cfg.batch_size, columns=["text"]):
            texts = [text or "" for text in batch.column(0).to_pylist()]
            for text, encoding in zip(texts, tokenizer.encode_batch(texts), strict=True):
                ids = np.asarray([*encoding.ids, eot_id], dtype=dtype)
                stream.write(ids.tobytes())
                total += len(ids)
                ends.append(total)
                doc_bytes.append(len(text.encode("utf-8")))
    if not ends:
        stream_path.unlink()
        raise ValueError(f"{docs_dir}: no documents to encode")

    cut = int(total * (1 - cfg.val_fraction))
    if not 0 < cut < total:
        stream_path.unlink()
        raise ValueError(
            f"{total} tokens are too few to hold out {cfg.val_fraction:.0%} by position"
        )
    tokens = np.memmap(stream_path, dtype=dtype, mode="r")
    names = {}
    for split, lo, hi in (("train", 0, cut), ("val", cut, total)):
        with TokenShardWriter(out_dir, split, vocab_size, cfg.tokens_per_shard) as writer:
            for start in range(lo, hi, COPY_CHUNK_TOKENS):
                writer.write(np.asarray(tokens[start : min(hi, start + COPY_CHUNK_TOKENS)]))
        names[split] = [p.name for p in writer.paths]

    # Bytes of text on each side: whole documents, plus the cut document's decoded val part.
    ends_array = np.asarray(ends)
    cut_doc = int(np.searchsorted(ends_array, cut, side="right"))  # the document holding `cut`
    cut_doc_start = int(ends_array[cut_doc - 1]) if cut_doc else 0
    val_bytes = sum(doc_bytes[cut_doc + 1 :])
    if cut_doc < len(ends):
        tail = [int(t) for t in tokens[cut : ends_array[cut_doc]] if int(t) != eot_id]
        val_bytes += len(tokenizer.decode(tail, skip_special_tokens=False).encode("utf-8"))
    del tokens
    stream_path.unlink()
    train_bytes = sum(doc_bytes) - val_bytes
    val_tokens = total - cut
    cut_inside = cut_doc < len(ends) and cut > cut_doc_start
    return {
        "counts": {
            "train_documents": cut_doc + (1 if cut_inside else 0),
            "val_documents": len(ends) - cut_doc,
            "train_tokens": cut,
            "val_tokens": val_tokens,
            "train_shards": len(names["train"]),
            "val_shards": len(names["val"]),
        },
        "stats": {
            "split": "position",
            "train_bytes": train_bytes,
            "val_bytes": val_bytes,
            "bytes_per_token_train": train_bytes / cut,
            "bytes_per_token_val": val_bytes / val_tokens,
            "vocab_size": vocab_size,
            "eot_id": eot_id,
            "dtype": np.dtype(dtype).name,
            "val_fraction": cfg.val_fraction,
            "encoder": "tokenizers",
            "shards": names,
        },
    }
