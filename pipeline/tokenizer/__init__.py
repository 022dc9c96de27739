"""Tokenizer stage: document shards in; `tokenizer.json` and train/val token shards out.

- `train_bpe`: byte-level BPE training (`train_tokenizer`, `load_tokenizer`).
- `encode`: documents -> token shards, split by document id (`write_token_shards`).
- `token_shards`: the binary token shard format (writer, memory-mapped reader).
"""

from pipeline.tokenizer.encode import write_token_shards
from pipeline.tokenizer.token_shards import TokenShardWriter, load_tokens, split_paths
from pipeline.tokenizer.train_bpe import EOT_TOKEN, PAD_TOKEN, load_tokenizer, train_tokenizer

__all__ = [
    "EOT_TOKEN",
    "PAD_TOKEN",
    "TokenShardWriter",
    "load_tokenizer",
    "load_tokens",
    "split_paths",
    "train_tokenizer",
    "write_token_shards",
]
