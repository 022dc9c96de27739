"""Tokenizer stage: BPE training, round trips, and train/val token shards, on real text."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ShardsConfig, TokenizerConfig
from pipeline.documents import document_id, make_document, write_documents
from pipeline.tokenizer import load_tokenizer, load_tokens, split_paths, train_tokenizer
from pipeline.tokenizer.encode import write_token_shards
from pipeline.tokenizer.token_shards import read_header

BOTCHAN = Path(__file__).resolve().parents[1] / "data" / "sample" / "botchan.txt"

# Written for this test, so one test path needs no shared data at all.
INLINE_PARAGRAPHS = [
    "The river had risen overnight, and by morning the lower fields were under water. "
    "Farmers stood along the embankment, counting the fence posts that still showed.",
    "A tokenizer learns which pairs of bytes occur together most often and merges them. "
    "After a few thousand merges, common words become single tokens.",
    "Le café était fermé, alors nous avons marché jusqu'à la gare. Il pleuvait à verse.",
    "東京の朝は早い。電車は満員で、誰もが静かにスマートフォンを見ている。",
    "Prices rose 3.5% in March, the statistics office said on Tuesday, "
    "while wages grew by only 1.2% over the same period.",
    "def add(a, b):\n\treturn a + b\n\nprint(add(2, 3))  # prints 5",
    "She laughed 😂 and sent back a thumbs-up 👍🏽, then a rocket 🚀 for good measure.",
    "The committee will meet again next week to review the proposal and vote on the budget.",
    "In the old library, the shelves smelled of dust and glue, and the floorboards creaked.",
    "Wind turbines along the coast produced more power this winter than in any year before.",
]

TRICKY_STRINGS = [
    "naïve café, crème brûlée, Ångström, façade",
    "emoji 👩‍👩‍👧‍👦 flags 🇯🇵🇫🇷 skin tone 👍🏽 and 🤖",
    "日本語のテキストと中文文本和한국어",
    "\ttabs\tand\n\nnewlines\r\n  double  spaces  ",
    " leading space and trailing space ",
    "",
]


def write_corpus(folder: Path, texts: list[str], max_docs: int = 1000) -> list[dict]:
    docs = [
        make_document(id=document_id("test", f"doc-{i}"), text=text, source="test")
        for i, text in enumerate(texts)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    write_documents(docs, folder, max_docs=max_docs)
    return docs


def botchan_documents() -> list[str]:
    if not BOTCHAN.is_file():
        pytest.skip(f"{BOTCHAN} not available")
    lines = BOTCHAN.read_text(encoding="utf-8").splitlines()
    return ["\n".join(lines[i : i + 30]) for i in range(0, len(lines), 30)]


def split_documents(tokens: np.ndarray, eot_id: int) -> list[list[int]]:
    """A token stream cut at its end-of-text ids (each document must end with one)."""
    ends = np.flatnonzero(tokens == eot_id)
    assert len(tokens) == 0 or ends[-1] == len(tokens) - 1, "stream does not end with eot"
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tokens[s:e].tolist() for s, e in zip(starts, ends, strict=True)]


def read_split(folder: Path, split: str) -> np.ndarray:
    paths = split_paths(folder, split)
    if not paths:
        return np.zeros(0, dtype=np.uint16)
    return np.concatenate([np.asarray(load_tokens(path)) for path in paths])


@pytest.fixture(scope="module")
def botchan_corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    folder = tmp_path_factory.mktemp("botchan") / "docs"
    # Several Parquet shards, so reading across shard boundaries is exercised too.
    return folder, write_corpus(folder, botchan_documents(), max_docs=50)


@pytest.fixture(scope="module")
def botchan_tokenizer(botchan_corpus, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("botchan_tokenizer")
    manifest = train_tokenizer(botchan_corpus[0], out, TokenizerConfig(vocab_size=1000))
    return out, manifest


# ---------------------------------------------------------------------------------- training


def test_training_on_inline_text_needs_no_shared_data(tmp_path):
    docs_dir = tmp_path / "docs"
    write_corpus(docs_dir, INLINE_PARAGRAPHS)
    cfg = TokenizerConfig(vocab_size=2000, special_tokens=["<|endoftext|>", "<|pad|>", "<|sep|>"])

    manifest = train_tokenizer(docs_dir, tmp_path / "tok", cfg)

    assert manifest["counts"]["documents"] == len(INLINE_PARAGRAPHS)
    stats = manifest["stats"]
    # Ten paragraphs hold far fewer frequent pairs than 2000 - 259 merges.
    assert 259 < stats["vocab_size"] < 2000
    assert (stats["eot_id"], stats["pad_id"]) == (0, 1)
    assert stats["special_tokens"] == {"<|endoftext|>": 0, "<|pad|>": 1, "<|sep|>": 2}

    tokenizer = load_tokenizer(tmp_path / "tok" / "tokenizer.json")
    assert tokenizer.get_vocab_size() == stats["vocab_size"]
    # Every byte is in the vocabulary, right after the special tokens.
    assert tokenizer.token_to_id("Ā") is not None and tokenizer.token_to_id("a") is not None
    for text in INLINE_PARAGRAPHS + TRICKY_STRINGS:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text
    # Merges were learned from the corpus: a frequent word costs fewer tokens than its bytes.
    assert len(tokenizer.encode("the river").ids) < len("the river")


def test_transformers_files_name_the_special_tokens(botchan_tokenizer):
    folder, manifest = botchan_tokenizer
    config = json.loads((folder / "tokenizer_config.json").read_text())
    special_map = json.loads((folder / "special_tokens_map.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["added_tokens_decoder"]["0"]["content"] == "<|endoftext|>"
    assert config["added_tokens_decoder"]["1"]["content"] == "<|pad|>"
    assert special_map == {
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|pad|>",
    }


def test_transformers_loads_the_saved_tokenizer(botchan_tokenizer):
    transformers = pytest.importorskip("transformers")
    folder, manifest = botchan_tokenizer
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(str(folder))
    native = load_tokenizer(folder)
    text = "I was a reckless fellow from my childhood."
    assert fast(text)["input_ids"] == native.encode(text).ids
    assert (fast.eos_token_id, fast.pad_token_id) == (0, 1)


def test_training_reaches_the_requested_vocab_and_is_deterministic(
    botchan_corpus, botchan_tokenizer, tmp_path
):
    folder, manifest = botchan_tokenizer
    assert manifest["counts"]["documents"] == len(botchan_corpus[1])
    assert manifest["stats"]["vocab_size"] == 1000
    assert (manifest["stats"]["eot_id"], manifest["stats"]["pad_id"]) == (0, 1)

    again = train_tokenizer(botchan_corpus[0], tmp_path / "again", TokenizerConfig(vocab_size=1000))

    assert again == manifest
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / "again" / name).read_bytes() == (folder / name).read_bytes()


@pytest.mark.parametrize("text", TRICKY_STRINGS)
def test_decode_inverts_encode(botchan_tokenizer, text):
    tokenizer = load_tokenizer(botchan_tokenizer[0])
    assert tokenizer.decode(tokenizer.encode(text).ids) == text


# ------------------------------------------------------------------------------------ shards


def test_shards_match_manifest_and_split_by_id(botchan_corpus, botchan_tokenizer, tmp_path):
    docs_dir, docs = botchan_corpus
    tokenizer_folder, tok_manifest = botchan_tokenizer
    cfg = ShardsConfig(val_fraction=0.2, tokens_per_shard=5000)

    manifest = write_token_shards(
        docs_dir, tokenizer_folder / "tokenizer.json", tmp_path / "a", cfg
    )
    counts, stats = manifest["counts"], manifest["stats"]
    eot = tok_manifest["stats"]["eot_id"]
    assert stats["eot_id"] == eot == 0
    assert stats["vocab_size"] == 1000 and stats["dtype"] == "uint16"
    assert counts["train_documents"] + counts["val_documents"] == len(docs)
    assert 0 < counts["val_documents"] < counts["train_documents"]

    text_of = {doc["id"]: doc["text"] for doc in docs}
    ids_by_text = {doc["text"]: doc["id"] for doc in docs}
    assert len(ids_by_text) == len(docs)  # texts are unique, so a decoded text names its doc
    tokenizer = load_tokenizer(tokenizer_folder)
    seen: dict[str, set[str]] = {}
    for split in ("train", "val"):
        paths = split_paths(tmp_path / "a", split)
        assert len(paths) == counts[f"{split}_shards"] > 1  # 5000 tokens per shard forces several
        for path in paths:
            dtype, count = read_header(path)
            assert dtype == np.uint16 and 0 < count <= cfg.tokens_per_shard
        tokens = read_split(tmp_path / "a", split)
        assert sum(read_header(p)[1] for p in paths) == len(tokens) == counts[f"{split}_tokens"]
        # Every document ends with exactly one end-of-text id, and decodes to its own text.
        assert int((tokens == eot).sum()) == counts[f"{split}_documents"]
        texts = [tokenizer.decode(ids) for ids in split_documents(tokens, eot)]
        seen[split] = {ids_by_text[text] for text in texts}
        assert len(seen[split]) == counts[f"{split}_documents"]
        assert stats[f"{split}_bytes"] == sum(len(text.encode()) for text in texts)
        assert stats[f"bytes_per_token_{split}"] == pytest.approx(
            stats[f"{split}_bytes"] / counts[f"{split}_tokens"]
        )
    assert not seen["train"] & seen["val"]
    assert seen["train"] | seen["val"] == set(text_of)

    # The first document of the corpus, read back through the memory map.
    first = docs[0]
    split = "val" if first["id"] in seen["val"] else "train"
    expected = tokenizer.encode(first["text"]).ids + [eot]
    assert load_tokens(split_paths(tmp_path / "a", split)[0])[: len(expected)].tolist() == expected


def test_shards_are_reproducible_and_independent_of_document_order(
    botchan_corpus, botchan_tokenizer, tmp_path
):
    docs_dir, docs = botchan_corpus
    tokenizer_file = botchan_tokenizer[0] / "tokenizer.json"
    cfg = ShardsConfig(val_fraction=0.2, tokens_per_shard=20_000)
    first = write_token_shards(docs_dir, tokenizer_file, tmp_path / "a", cfg)
    # "b" first holds many more, smaller shards: the rerun must not leave any of them behind.
    small = ShardsConfig(val_fraction=0.2, tokens_per_shard=1000)
    write_token_shards(docs_dir, tokenizer_file, tmp_path / "b", small)
    second = write_token_shards(docs_dir, tokenizer_file, tmp_path / "b", cfg)
    assert first == second
    names_a = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names_a == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names_a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    # The same documents in another order and other Parquet shards: same split per document.
    shuffled = list(docs)
    random.Random(7).shuffle(shuffled)
    (tmp_path / "shuffled").mkdir()
    write_documents(shuffled, tmp_path / "shuffled", max_docs=17)
    third = write_token_shards(tmp_path / "shuffled", tokenizer_file, tmp_path / "c", cfg)
    assert third["counts"] == first["counts"]
    tokenizer = load_tokenizer(tokenizer_file)
    for split in ("train", "val"):
        texts_a = split_documents(read_split(tmp_path / "a", split), 0)
        texts_c = split_documents(read_split(tmp_path / "c", split), 0)
        assert sorted(map(tokenizer.decode, texts_a)) == sorted(map(tokenizer.decode, texts_c))


@pytest.mark.parametrize("val_fraction", [0.001, 0.999])
def test_tiny_corpus_gets_both_splits(tmp_path, val_fraction):
    docs_dir = tmp_path / "docs"
    write_corpus(docs_dir, INLINE_PARAGRAPHS[:2])
    train_tokenizer(docs_dir, tmp_path / "tok", TokenizerConfig(vocab_size=300))

    manifest = write_token_shards(
        docs_dir, tmp_path / "tok", tmp_path / "shards", ShardsConfig(val_fraction=val_fraction)
    )

    assert manifest["counts"]["train_documents"] == manifest["counts"]["val_documents"] == 1
    tokenizer = load_tokenizer(tmp_path / "tok")
    decoded = {
        tokenizer.decode(ids)
        for split in ("train", "val")
        for ids in split_documents(read_split(tmp_path / "shards", split), 0)
    }
    assert decoded == set(INLINE_PARAGRAPHS[:2])


def test_special_token_text_inside_a_document_stays_text(tmp_path):
    texts = INLINE_PARAGRAPHS + ["a forum post quoting <|endoftext|> and <|pad|> verbatim"]
    docs_dir = tmp_path / "docs"
    write_corpus(docs_dir, texts)
    train_tokenizer(docs_dir, tmp_path / "tok", TokenizerConfig(vocab_size=400))

    manifest = write_token_shards(
        docs_dir, tmp_path / "tok", tmp_path / "shards", ShardsConfig(val_fraction=0.3)
    )

    tokenizer = load_tokenizer(tmp_path / "tok")
    decoded = []
    for split in ("train", "val"):
        tokens = read_split(tmp_path / "shards", split)
        assert int((tokens == 0).sum()) == manifest["counts"][f"{split}_documents"]
        assert int((tokens == 1).sum()) == 0  # no pad id either
        decoded += [tokenizer.decode(ids) for ids in split_documents(tokens, 0)]
    assert sorted(decoded) == sorted(texts)


def test_single_document_goes_to_train(tmp_path):
    docs_dir = tmp_path / "docs"
    write_corpus(docs_dir, INLINE_PARAGRAPHS[:1])
    train_tokenizer(docs_dir, tmp_path / "tok", TokenizerConfig(vocab_size=300))
    manifest = write_token_shards(
        docs_dir, tmp_path / "tok", tmp_path / "shards", ShardsConfig(val_fraction=0.999)
    )
    assert manifest["counts"]["train_documents"] == 1
    assert manifest["counts"]["val_documents"] == 0
    assert split_paths(tmp_path / "shards", "val") == []


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "docs").mkdir()
    with pytest.raises(ValueError, match="no documents"):
        train_tokenizer(tmp_path / "docs", tmp_path / "tok", TokenizerConfig(vocab_size=300))
