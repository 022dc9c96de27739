"""Character-level tokenizer (`tokenizer.type: char`), as nanoGPT's shakespeare_char.

In: a folder of document shards and a `TokenizerConfig`. Out, in `out_dir`: `tokenizer.json`
(Hugging Face `tokenizers` format, so `Tokenizer.from_file`, generation and evaluation load it
like the BPE one), `tokenizer_config.json` and `special_tokens_map.json` (for
`transformers.PreTrainedTokenizerFast`), and a manifest body with the vocabulary size and the
ids of the special tokens.

The vocabulary: the special tokens first (`<|endoftext|>` is 0), then `<|unk|>`, then every
character that occurs at least `min_frequency` times in the training documents, in code point
order (nanoGPT: `sorted(set(text))`); when there are more than `vocab_size` allows, the most
frequent ones. The model is a `WordLevel` over single characters: the pre-tokenizer isolates
each character, the `Fuse` decoder joins them back without spaces, and a character outside the
vocabulary becomes `<|unk|>`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from pipeline.config import TokenizerConfig
from pipeline.documents import iter_batches
from pipeline.special_tokens import EOT_TOKEN, PAD_TOKEN, UNK_TOKEN

TOKENIZER_FILE = "tokenizer.json"


def new_char_tokenizer(characters: list[str], special_tokens: list[str]) -> Tokenizer:
    """A character-level tokenizer over `characters`, with `special_tokens` first."""
    specials = list(dict.fromkeys([*special_tokens, UNK_TOKEN]))
    vocab = {token: i for i, token in enumerate(specials)}
    for char in characters:
        vocab.setdefault(char, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    # every character on its own ([\s\S]: newlines too)
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()  # join the characters without separators
    tokenizer.add_special_tokens(specials)
    return tokenizer


def count_characters(
    docs_dir: Path, batch_size: int = 1000, keep: Any = None
) -> tuple[Counter[str], int]:
    """(character counts, documents read) over the documents for which `keep(id)` is true."""
    counts: Counter[str] = Counter()
    documents = 0
    for batch in iter_batches(docs_dir, batch_size=batch_size, columns=["id", "text"]):
        for doc_id, text in zip(
            batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True
        ):
            if keep is not None and not keep(doc_id):
                continue
            counts.update(text or "")
            documents += 1
    return counts, documents


def choose_characters(counts: Counter[str], cfg: TokenizerConfig) -> list[str]:
    """Characters seen min_frequency times, at most what vocab_size leaves; code point order."""
    room = cfg.vocab_size - len(set(cfg.special_tokens) | {UNK_TOKEN})
    frequent = [c for c, n in counts.items() if n >= cfg.min_frequency]
    if len(frequent) > room:  # keep the most frequent (ties: the lower code point)
        frequent = sorted(frequent, key=lambda c: (-counts[c], c))[:room]
    return sorted(frequent)


def train_char_tokenizer(
    docs_dir: Path, out_dir: Path, cfg: TokenizerConfig, held_out: Any = None
) -> dict[str, Any]:
    """Build the character vocabulary of the documents in `docs_dir`; save it in `out_dir`.

    `held_out` (a `DocumentSplit`): when given, only its train documents are read.
    Returns {"counts": {"documents"}, "stats": {"type", "vocab_size", "eot_id", ...}}.
    """
    docs_dir, out_dir = Path(docs_dir), Path(out_dir)
    keep = None
    if held_out is not None:

        def keep(doc_id: str) -> bool:
            return held_out.split_of(doc_id) == "train"

    counts, documents = count_characters(docs_dir, cfg.batch_size, keep)
    if documents == 0:
        raise ValueError(f"{docs_dir}: no documents to build a character vocabulary from")
    characters = choose_characters(counts, cfg)
    tokenizer = new_char_tokenizer(characters, list(cfg.special_tokens))
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / TOKENIZER_FILE), pretty=True)
    _write_transformers_files(out_dir, tokenizer, list(cfg.special_tokens))
    dropped = sorted(set(counts) - set(characters))
    return {
        "counts": {"documents": documents, "dropped_characters": sum(counts[c] for c in dropped)},
        "stats": {
            "type": "char",
            "vocab_size": tokenizer.get_vocab_size(),
            "requested_vocab_size": cfg.vocab_size,
            "characters": len(characters),
            "dropped_distinct_characters": len(dropped),
            "eot_id": tokenizer.token_to_id(EOT_TOKEN),
            "pad_id": tokenizer.token_to_id(PAD_TOKEN),
            "unk_id": tokenizer.token_to_id(UNK_TOKEN),
            "special_tokens": {
                token: tokenizer.token_to_id(token) for token in [*cfg.special_tokens, UNK_TOKEN]
            },
        },
    }


def _write_transformers_files(
    out_dir: Path, tokenizer: Tokenizer, special_tokens: list[str]
) -> None:
    """tokenizer_config.json and special_tokens_map.json, as transformers reads them."""
    roles: dict[str, Any] = {"bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN, "unk_token": UNK_TOKEN}
    if PAD_TOKEN in special_tokens:
        roles["pad_token"] = PAD_TOKEN
    extra = [t for t in special_tokens if t not in (EOT_TOKEN, PAD_TOKEN, UNK_TOKEN)]
    if extra:
        roles["additional_special_tokens"] = extra
    added = {
        str(tokenizer.token_to_id(token)): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token in dict.fromkeys([*special_tokens, UNK_TOKEN])
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": added,
        **roles,
    }
    for name, body in (
        ("tokenizer_config.json", tokenizer_config),
        ("special_tokens_map.json", roles),
    ):
        (out_dir / name).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
