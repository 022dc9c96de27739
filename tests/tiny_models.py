"""Small real models for the evaluation, interop, registry and serving tests.

A byte-level BPE tokenizer trained on the bundled sample text, and randomly initialised GPTs
(seeded, so every run builds the same weights) saved as model folders the way training saves
them: `model.safetensors`, `model_config.json`, `tokenizer.json`.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, pre_tokenizers, trainers

from pipeline.model.checkpoint import save_model
from pipeline.model.gpt import GPT, GPTConfig
from pipeline.tokenizer.train_bpe import new_byte_level_bpe

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def sample_texts() -> list[str]:
    texts = (SAMPLE / "botchan.txt").read_text(encoding="utf-8").split("\n\n")
    with gzip.open(SAMPLE / "wikitext2_test_articles.jsonl.gz", "rt", encoding="utf-8") as f:
        texts += [json.loads(line)["text"] for line in f]
    return texts


def train_tokenizer(vocab_size: int = 1000) -> Tokenizer:
    tokenizer = new_byte_level_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(sample_texts(), trainer=trainer)
    return tokenizer


def save_tiny_model(
    folder: Path, tokenizer: Tokenizer, seed: int = 0, block_size: int = 256, **config
) -> Path:
    """A seeded random GPT with the tokenizer beside it; returns the folder."""
    torch.manual_seed(seed)
    settings = {"n_layer": 2, "n_head": 2, "n_embd": 32, **config}
    net = GPT(GPTConfig(vocab_size=tokenizer.get_vocab_size(), block_size=block_size, **settings))
    save_model(net, folder)
    tokenizer.save(str(Path(folder) / "tokenizer.json"))
    return Path(folder)


_TEMPLATE_DB: list[Path] = []  # one migrated, empty MLflow database per test session


def mlflow_store(folder: Path) -> str:
    """A SQLite tracking URI in `folder`, copied from a database migrated once per session
    (creating MLflow's tables takes seconds; copying the file takes none)."""
    import shutil
    import tempfile

    from mlflow import MlflowClient

    if not _TEMPLATE_DB:
        template = Path(tempfile.mkdtemp(prefix="llmpipe-mlflow-template-")) / "mlflow.db"
        MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()
        _TEMPLATE_DB.append(template)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_TEMPLATE_DB[0], folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"
