"""Byte-level BPE tokenizer training.

In: a folder of document shards (`part-*.parquet`, see `pipeline.documents`) and a
`TokenizerConfig`. Out, in `out_dir`: `tokenizer.json` (Hugging Face `tokenizers` format),
`tokenizer_config.json` and `special_tokens_map.json` (so `transformers.AutoTokenizer` /
`PreTrainedTokenizerFast` can load the folder), and a manifest body with the document count,
the actual vocabulary size and the ids of the special tokens.

The model is GPT-2 style: text is split by the GPT-2 regex, mapped to bytes, and merges are
learned over bytes, so every string round-trips and there is no unknown token. The special
tokens take the first ids (`<|endoftext|>` is 0), then the 256 byte symbols, then the merges.
Training streams batches of texts into `train_from_iterator`; the corpus is never one string.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pipeline.config import TokenizerConfig
from pipeline.documents import iter_texts, shard_paths

CODE_VERSION = 1  # bump when the trained tokenizer would change for the same input and config
TOKENIZER_FILE = "tokenizer.json"
EOT_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def count_documents(docs_dir: Path) -> int:
    """Number of documents in a shard folder, from the Parquet footers (no data read)."""
    return sum(pq.ParquetFile(path).metadata.num_rows for path in shard_paths(docs_dir))


def new_byte_level_bpe() -> Tokenizer:
    """An untrained GPT-2 style byte-level BPE tokenizer."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_tokenizer(docs_dir: Path, out_dir: Path, cfg: TokenizerConfig) -> dict[str, Any]:
    """Train byte-level BPE on the documents in `docs_dir`; save it in `out_dir`.

    Returns {"counts": {"documents"}, "stats": {"vocab_size", "eot_id", "pad_id", ...}}. The
    vocabulary can come out smaller than `cfg.vocab_size` when the corpus has too few pairs
    that occur `cfg.min_frequency` times.
    """
    docs_dir, out_dir = Path(docs_dir), Path(out_dir)
    total = count_documents(docs_dir)
    if total == 0:
        raise ValueError(f"{docs_dir}: no documents to train a tokenizer on")

    seen = 0

    def text_batches() -> Iterator[list[str]]:
        nonlocal seen
        for texts in iter_texts(docs_dir, batch_size=cfg.batch_size):
            seen += len(texts)
            yield [text or "" for text in texts]  # a null text counts as an empty document

    tokenizer = new_byte_level_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(cfg.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(text_batches(), trainer=trainer, length=total)

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / TOKENIZER_FILE), pretty=True)
    _write_transformers_files(out_dir, tokenizer, list(cfg.special_tokens))

    return {
        "counts": {"documents": seen},
        "stats": {
            "vocab_size": tokenizer.get_vocab_size(),
            "requested_vocab_size": cfg.vocab_size,
            "eot_id": tokenizer.token_to_id(EOT_TOKEN),
            "pad_id": tokenizer.token_to_id(PAD_TOKEN),
            "special_tokens": {token: tokenizer.token_to_id(token) for token in cfg.special_tokens},
        },
    }


def _write_transformers_files(
    out_dir: Path, tokenizer: Tokenizer, special_tokens: list[str]
) -> None:
    """tokenizer_config.json and special_tokens_map.json in the layout transformers reads.

    GPT-2 convention: the end-of-text token doubles as beginning- and end-of-sequence. A byte
    level vocabulary has no unknown token, so none is declared.
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


def load_tokenizer(path: Path) -> Tokenizer:
    """A trained tokenizer from `tokenizer.json`, or from a folder holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    return Tokenizer.from_file(str(path))
