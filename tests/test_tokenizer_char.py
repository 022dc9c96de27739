"""Character-level tokenizer (`tokenizer.type: char`) and token shards split by position
(`shards.split: position`), on real text: the repository's botchan.txt and, when present, the
shared Tiny Shakespeare (nanoGPT's shakespeare_char split and vocabulary)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from pipeline.config import ShardsConfig, TokenizerConfig
from pipeline.documents import make_document, write_documents
from pipeline.special_tokens import UNK_TOKEN
from pipeline.tokenizer.char import train_char_tokenizer
from pipeline.tokenizer.position_split import write_position_split_shards
from pipeline.tokenizer.token_shards import load_tokens, split_paths

REPO = Path(__file__).resolve().parents[1]
BOTCHAN = REPO / "data" / "sample" / "botchan.txt"
SHAKESPEARE = REPO.parent / "shared" / "data" / "lm" / "tinyshakespeare" / "input.txt"


def write_docs(folder: Path, texts: list[str]) -> Path:
    docs = [
        make_document(id=f"doc-{i:03d}", text=text, source="test") for i, text in enumerate(texts)
    ]
    write_documents(docs, folder, max_docs=3)  # several shards: order must follow them
    return folder


def botchan_paragraphs(count: int = 40) -> list[str]:
    paragraphs = [p for p in BOTCHAN.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    return paragraphs[:count]


def test_char_tokenizer_round_trips_and_loads_with_tokenizers(tmp_path):
    texts = botchan_paragraphs()
    docs = write_docs(tmp_path / "docs", texts)
    cfg = TokenizerConfig(min_frequency=1)
    body = train_char_tokenizer(docs, tmp_path / "tok", cfg)

    tokenizer = Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    chars = sorted(set("".join(texts)))
    specials = list(cfg.special_tokens) + [UNK_TOKEN]
    assert tokenizer.get_vocab_size() == len(specials) + len(chars) == body["stats"]["vocab_size"]
    assert tokenizer.token_to_id("<|endoftext|>") == 0 == body["stats"]["eot_id"]
    # ids follow code point order after the special tokens, as nanoGPT's stoi
    assert [tokenizer.token_to_id(c) for c in chars] == list(
        range(len(specials), len(specials) + len(chars))
    )
    for text in texts[:10]:
        encoding = tokenizer.encode(text)
        assert len(encoding.ids) == len(text)  # one token per character
        assert tokenizer.decode(encoding.ids) == text
    # a character never seen becomes <|unk|>; special-token text stays characters when asked
    assert tokenizer.encode("a\u4e2db").ids[1] == tokenizer.token_to_id(UNK_TOKEN)
    tokenizer.encode_special_tokens = True
    assert len(tokenizer.encode("<|endoftext|>").ids) == len("<|endoftext|>")
    # what transformers needs beside it
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "tok"))
    assert fast.eos_token == "<|endoftext|>" and fast.decode(fast("Botchan").input_ids) == "Botchan"


def test_char_vocabulary_respects_min_frequency_vocab_size_and_held_out_docs(tmp_path):
    docs = write_docs(tmp_path / "docs", ["aaaa bbb cc d", "zzzz qqqq"])
    body = train_char_tokenizer(docs, tmp_path / "a", TokenizerConfig(min_frequency=2))
    vocab = Tokenizer.from_file(str(tmp_path / "a" / "tokenizer.json")).get_vocab()
    assert {"a", "b", "c", " ", "z", "q"} <= set(vocab) and "d" not in vocab
    assert body["counts"]["dropped_characters"] == 1

    cfg = TokenizerConfig(min_frequency=1, vocab_size=260, special_tokens=["<|endoftext|>"])
    many = "".join(chr(0x4E00 + i) * (1 + i % 3) for i in range(400))
    body = train_char_tokenizer(write_docs(tmp_path / "many", [many]), tmp_path / "b", cfg)
    assert body["stats"]["vocab_size"] == 260  # capped: the most frequent characters kept

    class HoldOutSecond:
        def split_of(self, doc_id: str) -> str:
            return "val" if doc_id == "doc-001" else "train"

    body = train_char_tokenizer(
        docs, tmp_path / "c", TokenizerConfig(min_frequency=1), held_out=HoldOutSecond()
    )
    vocab = Tokenizer.from_file(str(tmp_path / "c" / "tokenizer.json")).get_vocab()
    assert "z" not in vocab and body["counts"]["documents"] == 1


def test_position_split_cuts_the_stream_of_documents_in_order(tmp_path):
    texts = botchan_paragraphs(30)
    docs = write_docs(tmp_path / "docs", texts)
    train_char_tokenizer(docs, tmp_path / "tok", TokenizerConfig(min_frequency=1))
    tokenizer_path = tmp_path / "tok" / "tokenizer.json"
    cfg = ShardsConfig(val_fraction=0.25, tokens_per_shard=2_000)
    body = write_position_split_shards(docs, tokenizer_path, tmp_path / "out", cfg)

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    stream = np.concatenate(
        [load_tokens(p) for split in ("train", "val") for p in split_paths(tmp_path / "out", split)]
    )
    expected = []
    for text in texts:
        expected += [*tokenizer.encode(text).ids, 0]
    assert stream.tolist() == expected  # every document, in order, each closed by eot
    counts, stats = body["counts"], body["stats"]
    assert counts["train_tokens"] == int(len(expected) * 0.75)
    assert counts["train_tokens"] + counts["val_tokens"] == len(expected)
    assert counts["train_shards"] > 1
    assert counts["train_documents"] + counts["val_documents"] in (len(texts), len(texts) + 1)
    total_bytes = sum(len(t.encode("utf-8")) for t in texts)
    assert stats["train_bytes"] + stats["val_bytes"] == total_bytes
    assert stats["bytes_per_token_val"] == pytest.approx(stats["val_bytes"] / counts["val_tokens"])
    assert stats["vocab_size"] == tokenizer.get_vocab_size() and stats["eot_id"] == 0
    assert not list((tmp_path / "out").glob(".stream*"))


def test_shakespeare_gives_nanogpts_vocabulary_and_split(tmp_path):
    if not SHAKESPEARE.is_file():
        pytest.skip("../shared/data/lm/tinyshakespeare is not present")
    text = SHAKESPEARE.read_text(encoding="utf-8")
    docs = write_docs(tmp_path / "docs", [text])
    cfg = TokenizerConfig(min_frequency=1, special_tokens=["<|endoftext|>"])
    body = train_char_tokenizer(docs, tmp_path / "tok", cfg)
    assert body["stats"]["characters"] == 65  # nanoGPT: vocab size 65
    shards = write_position_split_shards(
        docs, tmp_path / "tok" / "tokenizer.json", tmp_path / "out", ShardsConfig(val_fraction=0.1)
    )
    # nanoGPT: train has 1,003,854 tokens, val has 111,540 (one eot more here)
    assert abs(shards["counts"]["train_tokens"] - 1_003_854) <= 1
    assert abs(shards["counts"]["val_tokens"] - 111_540) <= 2
    val = load_tokens(split_paths(tmp_path / "out", "val")[0])
    tokenizer = Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    cut = shards["counts"]["train_tokens"]
    assert tokenizer.decode(val[:-1].tolist()) == text[cut:]  # the last 10% of the text
    assert shards["stats"]["bytes_per_token_val"] == pytest.approx(1.0, abs=0.001)
