"""Small real models for the server tests: a tokenizer trained by the pipeline's own BPE trainer
(so it has the chat role tokens `<|user|>` and `<|assistant|>`), seeded GPT folders, and a
registry with two versions of one model (v1 @champion, v2 @challenger)."""

from __future__ import annotations

from pathlib import Path

from tiny_models import mlflow_store, sample_texts, save_tiny_model
from tokenizers import Tokenizer

from pipeline.config import TokenizerConfig
from pipeline.tokenizer.train_bpe import train_bpe
from pipeline.tracking.registry import PromotionRule, register_model_dir
from pipeline.tracking.runs import Tracker

NAME = "chat-gpt-tiny"


def role_tokenizer(vocab_size: int = 400) -> Tokenizer:
    texts = sample_texts()
    return train_bpe(iter([texts]), TokenizerConfig(vocab_size=vocab_size), len(texts))


def model_folder(folder: Path, tokenizer: Tokenizer, seed: int = 0, block_size: int = 256) -> Path:
    return save_tiny_model(folder, tokenizer, seed=seed, block_size=block_size)


def two_version_registry(root: Path, tokenizer: Tokenizer) -> str:
    """A SQLite store where NAME v1 (val_bpb 3.0) is @champion and v2 (3.5) is @challenger."""
    uri = mlflow_store(root)
    tracker = Tracker(uri, "serve-test", artifact_root=root / "artifacts")
    for version, bpb in ((1, 3.0), (2, 3.5)):
        folder = model_folder(root / f"model-{version}", tokenizer, seed=version)
        run = tracker.start_run(f"register-{version}")
        register_model_dir(uri, run, folder, NAME, {"val_bpb": bpb}, PromotionRule())
        tracker.end_run(run)
    return uri
