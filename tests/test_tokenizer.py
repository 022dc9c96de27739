"""Tokenizer training: pre-tokenizer, special tokens, transformers files, determinism and the
held-out measures, on real text (data/sample/botchan.txt) and a few inline paragraphs.

The helpers here (corpora, readers of shard folders) are shared by the other
tests/test_tokenizer_*.py files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ShardsConfig, TokenizerConfig
from pipeline.documents import document_id, iter_documents, make_document, write_documents
from pipeline.tokenizer import load_tokenizer, load_tokens, split_paths, train_tokenizer
from pipeline.tokenizer.splits import DocumentSplit
from pipeline.tokenizer.text_encoder import _byte_decoder

BOTCHAN = Path(__file__).resolve().parents[1] / "data" / "sample" / "botchan.txt"
SPECIALS = ["<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>"]

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


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of a folder by name (for byte-for-byte comparisons)."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


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


def test_default_special_tokens_include_the_fine_tuning_markers(botchan_tokenizer):
    folder, manifest = botchan_tokenizer
    assert manifest["stats"]["special_tokens"] == {token: i for i, token in enumerate(SPECIALS)}
    tokenizer = load_tokenizer(folder)
    # Added as special tokens: a marker in a prompt template is one id, never split.
    ids = tokenizer.encode("<|user|>Who wrote Botchan?<|assistant|>Soseki.<|endoftext|>").ids
    assert ids[0] == 2 and 3 in ids and ids[-1] == 0


def test_pretokenizer_splits_words_punctuation_and_every_digit(botchan_tokenizer):
    tokenizer = load_tokenizer(botchan_tokenizer[0])
    to_byte = _byte_decoder()
    text = "He paid ¥12,500 in 2024's\tspring!! 東京 😀"
    pieces = [
        bytes(to_byte[c] for c in piece).decode("utf-8")
        for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text)
    ]
    assert "".join(pieces) == text
    assert pieces == [
        "He", " paid", " ¥", "1", "2", ",", "5", "0", "0", " in", " ", "2", "0", "2", "4",
        "'s", "\tspring", "!!", " 東京", " 😀",
    ]  # fmt: skip
    # A merge never spans two digits, so every digit of a number is its own token.
    for token_id in tokenizer.encode("in 1984 and 20240229").ids:
        token = tokenizer.decode([token_id])
        assert not any(c.isdigit() for c in token) or token.strip().isdigit() and len(token) == 1


def test_transformers_files_name_the_special_tokens(botchan_tokenizer):
    folder, manifest = botchan_tokenizer
    config = json.loads((folder / "tokenizer_config.json").read_text())
    special_map = json.loads((folder / "special_tokens_map.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert [config["added_tokens_decoder"][str(i)]["content"] for i in range(4)] == SPECIALS
    assert special_map == {
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|pad|>",
        "additional_special_tokens": ["<|user|>", "<|assistant|>"],
    }


def test_transformers_loads_the_saved_tokenizer(botchan_tokenizer):
    transformers = pytest.importorskip("transformers")
    folder, manifest = botchan_tokenizer
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(str(folder))
    native = load_tokenizer(folder)
    for text in ["I was a reckless fellow from my childhood.", *TRICKY_STRINGS]:
        ids = fast(text)["input_ids"]
        assert ids == native.encode(text).ids
        assert fast.decode(ids) == text
    assert (fast.eos_token_id, fast.bos_token_id, fast.pad_token_id) == (0, 0, 1)
    assert fast.convert_tokens_to_ids(["<|user|>", "<|assistant|>"]) == [2, 3]
    batch = fast(["short", "a longer sentence here"], padding=True)
    assert batch["input_ids"][0][-1] == 1 and batch["attention_mask"][0][-1] == 0


def test_training_reaches_the_requested_vocab_and_is_deterministic(
    botchan_corpus, botchan_tokenizer, tmp_path
):
    folder, manifest = botchan_tokenizer
    assert manifest["counts"]["documents"] == len(botchan_corpus[1])
    assert manifest["stats"]["vocab_size"] == 1000
    assert (manifest["stats"]["eot_id"], manifest["stats"]["pad_id"]) == (0, 1)

    again = train_tokenizer(botchan_corpus[0], tmp_path / "again", TokenizerConfig(vocab_size=1000))

    assert again == manifest
    assert folder_bytes(tmp_path / "again") == folder_bytes(folder)


def test_held_out_documents_are_not_trained_on_and_are_measured(botchan_corpus, tmp_path):
    docs_dir, docs = botchan_corpus
    split = DocumentSplit.for_documents(docs_dir, ShardsConfig(val_fraction=0.2))
    val = [d for d in iter_documents(docs_dir) if split.split_of(d["id"]) == "val"]
    assert 0 < len(val) < len(docs)

    manifest = train_tokenizer(docs_dir, tmp_path, TokenizerConfig(vocab_size=1000), split)

    counts, stats = manifest["counts"], manifest["stats"]
    assert counts == {"documents": len(docs) - len(val), "heldout_documents": len(val)}
    tokenizer = load_tokenizer(tmp_path)
    ids = [tokenizer.encode(d["text"]).ids for d in val]
    tokens = sum(map(len, ids))
    assert stats["heldout_tokens"] == tokens
    assert stats["heldout_bytes"] == sum(len(d["text"].encode()) for d in val)
    assert stats["heldout_words"] == sum(len(d["text"].split()) for d in val)
    assert stats["heldout_bytes_per_token"] == pytest.approx(stats["heldout_bytes"] / tokens)
    assert stats["heldout_words_per_token"] == pytest.approx(stats["heldout_words"] / tokens)
    assert stats["heldout_tokens_per_word"] == pytest.approx(tokens / stats["heldout_words"])
    used = {i for doc in ids for i in doc}
    assert stats["heldout_vocab_used_fraction"] == pytest.approx(len(used) / 1000)
    # English prose at a 1000-token vocabulary: between characters and whole words.
    assert 2.0 < stats["heldout_bytes_per_token"] < 4.0
    # Trained without the val documents: a different vocabulary than with them.
    with_val = train_tokenizer(docs_dir, tmp_path / "all", TokenizerConfig(vocab_size=1000))
    assert with_val["counts"]["documents"] == len(docs)
    assert (tmp_path / "tokenizer.json").read_bytes() != (
        tmp_path / "all" / "tokenizer.json"
    ).read_bytes()


def test_a_character_budget_trains_on_a_hashed_sample_of_whole_train_documents(
    botchan_corpus, tmp_path
):
    """`train_chars`: about that many characters of train documents, picked by a salted hash of
    their id (never a val document), the same sample each run; the manifest says the share."""
    from pipeline.tokenizer.train_bpe import in_sample

    docs_dir, docs = botchan_corpus
    split = DocumentSplit.for_documents(docs_dir, ShardsConfig(val_fraction=0.2))
    train = [d for d in iter_documents(docs_dir) if split.split_of(d["id"]) == "train"]
    available = sum(len(d["text"]) for d in train)
    cfg = TokenizerConfig(vocab_size=600, train_chars=available // 3)
    manifest = train_tokenizer(docs_dir, tmp_path / "a", cfg, split)
    stats = manifest["stats"]
    share = (available // 3) / available
    picked = [d for d in train if in_sample(d["id"], share)]
    assert stats["train_chars_available"] == available
    assert stats["sample"] == pytest.approx(share, abs=1e-6)
    assert manifest["counts"]["documents"] == len(picked)
    assert stats["trained_chars"] == sum(len(d["text"]) for d in picked)
    assert 0.15 < stats["trained_chars"] / available < 0.55  # about a third, whole documents
    # It learned from that sample alone: the same as training on those documents.
    only = tmp_path / "picked-docs"
    write_corpus(only, [d["text"] for d in picked])
    train_tokenizer(only, tmp_path / "alone", TokenizerConfig(vocab_size=600))
    assert (
        load_tokenizer(tmp_path / "a").get_vocab() == load_tokenizer(tmp_path / "alone").get_vocab()
    )
    # Deterministic; a budget over the corpus is every train document.
    assert train_tokenizer(docs_dir, tmp_path / "b", cfg, split) == manifest
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")
    whole = TokenizerConfig(vocab_size=600, train_chars=10 * available)
    assert train_tokenizer(docs_dir, tmp_path / "c", whole, split)["counts"]["documents"] == len(
        train
    )


def test_a_character_budget_is_for_bpe_and_stays_out_of_old_fingerprints():
    from pipeline.config import fingerprint_fields

    with pytest.raises(ValueError, match="train_chars"):
        TokenizerConfig(type="char", train_chars=1000)
    assert "train_chars" not in fingerprint_fields(TokenizerConfig())
    assert fingerprint_fields(TokenizerConfig(train_chars=5))["train_chars"] == 5


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "docs").mkdir()
    with pytest.raises(ValueError, match="no documents"):
        train_tokenizer(tmp_path / "docs", tmp_path / "tok", TokenizerConfig(vocab_size=300))
