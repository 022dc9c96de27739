"""Byte-level BPE tokenizer training, measured on held-out documents.

In: a folder of document shards (`part-*.parquet`, see `pipeline.documents`), a
`TokenizerConfig`, and optionally the `DocumentSplit` whose val documents are held out. Out, in
`out_dir`: `tokenizer.json` (Hugging Face `tokenizers` format), `tokenizer_config.json` and
`special_tokens_map.json` (so `transformers.PreTrainedTokenizerFast` / `AutoTokenizer` load the
folder), and a manifest body: documents trained on, vocabulary size, special token ids, and the
tokenizer's measures on the held-out documents (`heldout_bytes_per_token`,
`heldout_words_per_token`, `heldout_tokens_per_word`, `heldout_vocab_used_fraction`).

The tokenizer:
- Pre-tokenizer: GPT-4's regex (`PRETOKENIZER_PATTERN`), which splits text into words with their
  leading space, runs of punctuation, whitespace and contractions, except that every digit is a
  piece of its own (as in LLaMA): numbers are spelled digit by digit, so no merge ever spans
  digits. Then the pieces are mapped to bytes (GPT-2's byte-level alphabet) and merges are learned
  over bytes: every string round-trips and there is no unknown token.
- Ids: the special tokens first (`<|endoftext|>` is 0, `<|pad|>` 1, then the fine-tuning role
  markers `<|user|>` and `<|assistant|>` by default), then the 256 byte symbols, then the merges
  in the order they were learned. `<|endoftext|>` separates documents and is the BOS/EOS of
  transformers; `<|pad|>` pads batches; a fine-tuning example is
  `<|user|>PROMPT<|assistant|>RESPONSE<|endoftext|>`, the loss on RESPONSE and the final token.
- A word that is itself in the vocabulary is one token (`ignore_merges`), as in tiktoken, so the
  tiktoken encoder built from the same ranks gives the same ids (see `text_encoder`).
- Deterministic: the same documents and config give the same `tokenizer.json`, byte for byte.
  Training streams batches of texts into `train_from_iterator`; the corpus is never one string.
- `tokenizer.train_chars`: train on a sample of about that many characters, whole documents
  picked by a salted hash of their id (so spread over every source and shard, the same on every
  run), instead of every train document: the trainer's time and memory (one entry per distinct
  pre-token) then stop growing with the corpus. The manifest says the share and the characters.

`train_tokenizer` is the byte-level BPE recipe; another recipe (a character-level vocabulary,
say) is one more function that returns a `tokenizers.Tokenizer` for `fit_tokenizer` to save and
measure the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from pipeline.config import TokenizerConfig
from pipeline.documents import iter_batches, shard_paths
from pipeline.special_tokens import EOT_TOKEN, PAD_TOKEN
from pipeline.tokenizer.metrics import TokenTally, count_words, utf8_bytes
from pipeline.tokenizer.splits import DocumentSplit, id_hash_fraction
from pipeline.tokenizer.text_encoder import (
    TOKENIZER_FILE,
    TextEncoder,
    load_tokenizer,
)

__all__ = [
    "EOT_TOKEN",
    "PAD_TOKEN",
    "PRETOKENIZER_PATTERN",
    "TOKENIZER_FILE",
    "count_documents",
    "fit_tokenizer",
    "load_tokenizer",
    "new_byte_level_bpe",
    "save_tokenizer",
    "train_tokenizer",
]

# cl100k_base's pattern with \p{N}{1,3} replaced by \p{N}: one digit per piece.
PRETOKENIZER_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

SAMPLE_SALT = "tokenizer-sample:"

TextBatches = Callable[[], Iterator[list[str]]]


def count_documents(docs_dir: Path) -> int:
    """Number of documents in a shard folder, from the Parquet footers (no data read)."""
    return sum(pq.ParquetFile(path).metadata.num_rows for path in shard_paths(docs_dir))


def new_byte_level_bpe() -> Tokenizer:
    """An untrained byte-level BPE tokenizer with the GPT-style, digit-splitting pre-tokenizer."""
    tokenizer = Tokenizer(models.BPE(ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZER_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_bpe(text_batches: Iterator[list[str]], cfg: TokenizerConfig, length: int) -> Tokenizer:
    """Byte-level BPE learned from batches of texts (`length`: the number of texts, for logs)."""
    tokenizer = new_byte_level_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(cfg.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(text_batches, trainer=trainer, length=length)
    return tokenizer


def _document_texts(
    docs_dir: Path,
    batch_size: int,
    split: DocumentSplit | None,
    side: str,
    sample: float = 1.0,
) -> Iterator[list[str]]:
    """Batches of the texts of one side of the split (all texts when there is no split), and
    of those the `sample` share picked by a hash of their id."""
    for batch in iter_batches(docs_dir, batch_size=batch_size, columns=["id", "text"]):
        ids, texts = batch.column(0).to_pylist(), batch.column(1).to_pylist()
        yield [
            text or ""  # a null text counts as an empty document
            for doc_id, text in zip(ids, texts, strict=True)
            if (split is None or split.split_of(doc_id) == side)
            and (sample >= 1.0 or in_sample(doc_id, sample))
        ]


def in_sample(doc_id: str, share: float) -> bool:
    """Whether a document is in the tokenizer's training sample of `share` of the documents.
    Salted: the val split is the documents of smallest unsalted hash."""
    return id_hash_fraction(SAMPLE_SALT + doc_id) < share


def train_characters(docs_dir: Path, batch_size: int, split: DocumentSplit | None) -> int:
    """Characters of the train documents: what a `train_chars` budget is a share of."""
    total = 0
    for batch in iter_batches(docs_dir, batch_size=batch_size, columns=["id", "text"]):
        lengths = pc.utf8_length(batch.column(1)).fill_null(0).to_numpy(zero_copy_only=False)
        if split is not None:
            train = [split.split_of(doc_id) == "train" for doc_id in batch.column(0).to_pylist()]
            lengths = lengths[np.array(train, dtype=bool)]
        total += int(lengths.sum())
    return total


def train_tokenizer(
    docs_dir: Path, out_dir: Path, cfg: TokenizerConfig, held_out: DocumentSplit | None = None
) -> dict[str, Any]:
    """Train byte-level BPE on the documents in `docs_dir` (less the held-out ones); save it.

    Returns {"counts": {"documents", "heldout_documents"}, "stats": {"vocab_size", "eot_id",
    "pad_id", "special_tokens", "heldout_bytes_per_token", ...}}. The vocabulary can come out
    smaller than `cfg.vocab_size` when the corpus has too few pairs that occur
    `cfg.min_frequency` times.
    """
    return fit_tokenizer(train_bpe, docs_dir, out_dir, cfg, held_out)


def fit_tokenizer(
    recipe: Callable[[Iterator[list[str]], TokenizerConfig, int], Tokenizer],
    docs_dir: Path,
    out_dir: Path,
    cfg: TokenizerConfig,
    held_out: DocumentSplit | None = None,
) -> dict[str, Any]:
    """Run a training recipe on the train documents, save its tokenizer, measure it held out."""
    docs_dir, out_dir = Path(docs_dir), Path(out_dir)
    total = count_documents(docs_dir)
    if total == 0:
        raise ValueError(f"{docs_dir}: no documents to train a tokenizer on")

    seen = chars = 0

    def counted(batches: Iterator[list[str]]) -> Iterator[list[str]]:
        nonlocal seen, chars
        for texts in batches:
            seen += len(texts)
            chars += sum(map(len, texts))
            yield texts

    # A budget: whole documents, a share of them by a hash of their id (the same sample on
    # every run and machine), so the trainer's time and memory stop growing with the corpus.
    sample, available = 1.0, None
    if cfg.train_chars:
        available = train_characters(docs_dir, cfg.batch_size, held_out)
        sample = min(1.0, cfg.train_chars / max(available, 1))
    texts = counted(_document_texts(docs_dir, cfg.batch_size, held_out, "train", sample))
    tokenizer = recipe(texts, cfg, round(total * sample))
    save_tokenizer(tokenizer, out_dir, list(cfg.special_tokens))

    stats: dict[str, Any] = {
        "vocab_size": tokenizer.get_vocab_size(),
        "requested_vocab_size": cfg.vocab_size,
        "eot_id": tokenizer.token_to_id(EOT_TOKEN),
        "pad_id": tokenizer.token_to_id(PAD_TOKEN),
        "special_tokens": {token: tokenizer.token_to_id(token) for token in cfg.special_tokens},
    }
    if available is not None:
        stats.update(train_chars_available=available, trained_chars=chars, sample=round(sample, 6))
    counts = {"documents": seen}
    if held_out is not None:
        tally = measure_tokenizer(out_dir, docs_dir, held_out, cfg.batch_size)
        counts["heldout_documents"] = tally.documents
        summary = tally.summary(prefix="heldout_")
        summary.pop("heldout_documents")
        stats.update(summary)
    return {"counts": counts, "stats": stats}


def measure_tokenizer(
    tokenizer_path: Path, docs_dir: Path, held_out: DocumentSplit, batch_size: int
) -> TokenTally:
    """Bytes, words and tokens of the held-out (val) documents, without separators."""
    encoder = TextEncoder(Path(tokenizer_path), "tokenizers")  # the reference ids
    tally = TokenTally(encoder.vocab_size)
    for batch in iter_batches(docs_dir, batch_size=batch_size, columns=["id", "text"]):
        keep = [held_out.split_of(doc_id) == "val" for doc_id in batch.column(0).to_pylist()]
        if not any(keep):
            continue
        column = batch.column(1).filter(keep)
        texts = [text or "" for text in column.to_pylist()]
        encoded = encoder.encode_batch(texts)
        flat: list[int] = []
        for doc in encoded:
            flat.extend(doc)
        ids = np.array(flat, dtype=np.int64)
        tally.add(ids, len(encoded), utf8_bytes(column).sum(), count_words(texts))
    return tally


def save_tokenizer(tokenizer: Tokenizer, out_dir: Path, special_tokens: list[str]) -> None:
    """`tokenizer.json` plus the two files transformers reads beside it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / TOKENIZER_FILE), pretty=True)
    write_transformers_files(out_dir, tokenizer, special_tokens)


def write_transformers_files(
    out_dir: Path, tokenizer: Tokenizer, special_tokens: list[str]
) -> None:
    """tokenizer_config.json and special_tokens_map.json in the layout transformers reads.

    GPT-2 convention: the end-of-text token doubles as beginning- and end-of-sequence. A byte
    level vocabulary has no unknown token, so none is declared. The other special tokens (the
    fine-tuning markers) are `additional_special_tokens`, so transformers never splits them.
    """
    roles: dict[str, Any] = {"bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN}
    if PAD_TOKEN in special_tokens:
        roles["pad_token"] = PAD_TOKEN
    extra = [token for token in special_tokens if token not in (EOT_TOKEN, PAD_TOKEN)]
    if extra:
        roles["additional_special_tokens"] = extra
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(tokenizer.token_to_id(token)): {
                "content": token,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for token in special_tokens
        },
        **roles,
    }
    for name, body in (
        ("tokenizer_config.json", tokenizer_config),
        ("special_tokens_map.json", roles),
    ):
        (out_dir / name).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


def special_tokens_of(tokenizer_path: Path) -> list[str]:
    """The special tokens a saved tokenizer declares, in id order."""
    spec = json.loads(Path(tokenizer_path).read_text(encoding="utf-8"))
    added = sorted(spec.get("added_tokens") or [], key=lambda t: t["id"])
    return [t["content"] for t in added if t.get("special")]
