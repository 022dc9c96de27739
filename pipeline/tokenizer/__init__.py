"""Tokenizer stage: document shards in; `tokenizer.json` and train/val token shards out.

- `train_bpe`: byte-level BPE training with a GPT-style, digit-splitting pre-tokenizer,
  measured on held-out documents (`train_tokenizer`).
- `pretrained`: a tokenizer given in the config (a path or an MLflow URI) reused instead.
- `splits`: which documents are validation documents (a hash of the id).
- `text_encoder`: lossless text <-> ids, with tiktoken or `tokenizers` (`TextEncoder`).
- `encode`: documents -> token shards, in parallel units of work (`write_token_shards`).
- `token_shards`: the binary token shard format (writer, memory-mapped reader).
- `metrics`: bytes, words and tokens; vocabulary use.
- `stage`: the two DAG stages.

The reader that feeds training, (input, target) windows of `block_size + 1` tokens taken from the
memory-mapped shards, at random positions for training and in order for validation, is
`pipeline.train.data` (`TokenWindows`, `RandomTrainBatches`, `FixedValWindows`).
"""

from pipeline.special_tokens import EOT_TOKEN, PAD_TOKEN
from pipeline.tokenizer.encode import write_token_shards
from pipeline.tokenizer.text_encoder import (
    TextEncoder,
    load_tokenizer,
    valid_unicode,
)
from pipeline.tokenizer.token_shards import TokenShardWriter, load_tokens, split_paths
from pipeline.tokenizer.train_bpe import train_tokenizer

__all__ = [
    "EOT_TOKEN",
    "PAD_TOKEN",
    "TextEncoder",
    "TokenShardWriter",
    "load_tokenizer",
    "load_tokens",
    "split_paths",
    "train_tokenizer",
    "valid_unicode",
    "write_token_shards",
]
