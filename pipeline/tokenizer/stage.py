"""The tokenizer and shards stages as the DAG runs them.

In: the pipeline config, the dedup output (documents), and for shards the tokenizer output.
Out: the tokenizer stage's folder (a trained or reused `tokenizer.json` + transformers files)
and the shards stage's folder (`train-*.bin`, `val-*.bin`), each with its manifest body.

What the tokenizer stage depends on, for its fingerprint (`tokenizer_fields`):
- trained: the documents (the dedup output), the `tokenizer` config, and the split fields of
  `shards` (the val documents are held out of training and measured on);
- given (`tokenizer.pretrained`): the SHA-256 of the given files alone, so the same tokenizer
  gives the same fingerprint whatever the corpus, path or alias it was reached by.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig, fingerprint_fields
from pipeline.parallel import Executor
from pipeline.tokenizer.encode import write_token_shards
from pipeline.tokenizer.pretrained import locate_pretrained, reuse_tokenizer
from pipeline.tokenizer.splits import DocumentSplit, split_fields
from pipeline.tokenizer.text_encoder import TOKENIZER_FILE
from pipeline.tokenizer.train_bpe import train_tokenizer


def tokenizer_fields(config: PipelineConfig, tracking_uri: str | None) -> dict[str, Any]:
    """The fingerprinted config of the tokenizer stage: a given tokenizer's content hash, or
    the training settings (and the document split it holds the val documents out by)."""
    cfg = config.tokenizer
    if cfg.pretrained:
        given = locate_pretrained(cfg.pretrained, config.base_dir, tracking_uri)
        return {"tokenizer": {"pretrained_sha256": given.sha256}}
    return {"tokenizer": fingerprint_fields(cfg), "shards": split_fields(config.shards)}


def run_tokenizer_stage(
    docs_dir: Path | None, out_dir: Path, config: PipelineConfig, tracking_uri: str | None
) -> dict[str, Any]:
    cfg = config.tokenizer
    if cfg.pretrained:
        return reuse_tokenizer(
            locate_pretrained(cfg.pretrained, config.base_dir, tracking_uri), out_dir
        )
    if docs_dir is None:
        raise ValueError("training a tokenizer needs the documents (the dedup output)")
    held_out = DocumentSplit.for_documents(docs_dir, config.shards)
    if cfg.type == "char":
        from pipeline.tokenizer.char import train_char_tokenizer

        return train_char_tokenizer(docs_dir, out_dir, cfg, held_out=held_out)
    return train_tokenizer(docs_dir, out_dir, cfg, held_out=held_out)


def run_shards_stage(
    docs_dir: Path, tokenizer_dir: Path, out_dir: Path, config: PipelineConfig, executor: Executor
) -> dict[str, Any]:
    if config.shards.split == "position":
        from pipeline.tokenizer.position_split import write_position_split_shards

        return write_position_split_shards(
            docs_dir, tokenizer_dir / TOKENIZER_FILE, out_dir, config.shards
        )
    return write_token_shards(
        docs_dir, tokenizer_dir / TOKENIZER_FILE, out_dir, config.shards, executor=executor
    )
