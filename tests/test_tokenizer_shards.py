"""Token shards: the split by id, the manifest, byte-identical output whatever the workers, units
or encoder, the tiktoken check and its fallback, and the memory-mapped reader that feeds training.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from test_tokenizer import (
    INLINE_PARAGRAPHS,
    botchan_documents,
    folder_bytes,
    read_split,
    split_documents,
    write_corpus,
)

from pipeline.config import ShardsConfig, TokenizerConfig
from pipeline.documents import ShardWriter, write_documents
from pipeline.parallel import ProcessExecutor
from pipeline.tokenizer import load_tokenizer, load_tokens, split_paths, train_tokenizer
from pipeline.tokenizer.encode import plan_units, write_token_shards
from pipeline.tokenizer.text_encoder import TextEncoder
from pipeline.tokenizer.token_shards import HEADER_BYTES, read_header
from pipeline.train.data import FixedValWindows, RandomTrainBatches, TokenWindows


@pytest.fixture(scope="module")
def botchan_corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    folder = tmp_path_factory.mktemp("botchan") / "docs"
    return folder, write_corpus(folder, botchan_documents(), max_docs=50)  # 3 Parquet files


@pytest.fixture(scope="module")
def botchan_tokenizer(botchan_corpus, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("botchan_tokenizer")
    return out, train_tokenizer(botchan_corpus[0], out, TokenizerConfig(vocab_size=1000))


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
    assert stats["encoder"] == "tiktoken" and stats["encoder_fallback_reason"] == ""
    # a small corpus: every document's tiktoken ids were compared with tokenizers' (and agreed)
    assert stats["encoder_checked_documents"] == len(docs)
    assert counts["train_documents"] + counts["val_documents"] == len(docs)
    assert 0 < counts["val_documents"] < counts["train_documents"]
    assert not (tmp_path / "a" / ".parts").exists()

    ids_by_text = {doc["text"]: doc["id"] for doc in docs}
    text_of = {doc["id"]: doc["text"] for doc in docs}
    assert len(ids_by_text) == len(docs)  # texts are unique, so a decoded text names its doc
    tokenizer = load_tokenizer(tokenizer_folder)
    seen: dict[str, set[str]] = {}
    for split in ("train", "val"):
        paths = split_paths(tmp_path / "a", split)
        assert len(paths) == counts[f"{split}_shards"] > 1  # 5000 tokens per shard forces several
        for path in paths:
            dtype, count = read_header(path)
            assert dtype == np.uint16 and 0 < count <= cfg.tokens_per_shard
            assert path.stat().st_size == HEADER_BYTES + 2 * count
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
        used = len(np.unique(tokens)) / stats["vocab_size"]
        assert stats[f"vocab_used_fraction_{split}"] == pytest.approx(used)
    assert not seen["train"] & seen["val"]
    assert seen["train"] | seen["val"] == {doc["id"] for doc in docs}
    # Words (as str.split finds them) are counted on val, where the tokenizer is measured.
    val_words = sum(len(text_of[doc_id].split()) for doc_id in seen["val"])
    assert stats["val_words"] == val_words and "train_words" not in stats
    assert stats["words_per_token_val"] == pytest.approx(val_words / counts["val_tokens"])

    # The first document of the corpus, read back through the memory map.
    first = docs[0]
    split = "val" if first["id"] in seen["val"] else "train"
    expected = tokenizer.encode(first["text"]).ids + [eot]
    assert load_tokens(split_paths(tmp_path / "a", split)[0])[: len(expected)].tolist() == expected


def test_shards_are_byte_identical_for_any_workers_units_and_encoder(
    botchan_corpus, botchan_tokenizer, tmp_path
):
    _, docs = botchan_corpus
    docs_dir = tmp_path / "docs"  # 3 Parquet files with row groups of 10 documents
    with ShardWriter(docs_dir, max_docs=50, batch_size=10) as writer:
        for doc in docs:
            writer.write(doc)
    tokenizer_file = botchan_tokenizer[0] / "tokenizer.json"
    cfg = ShardsConfig(val_fraction=0.2, tokens_per_shard=20_000)
    first = write_token_shards(docs_dir, tokenizer_file, tmp_path / "a", cfg)
    assert len(plan_units(docs_dir, cfg.docs_per_unit)) == 3  # one per Parquet file

    # Units of 10 documents, on 2 worker processes: the same bytes.
    small_units = cfg.model_copy(update={"docs_per_unit": 10})
    assert len(plan_units(docs_dir, 10)) == 14
    with ProcessExecutor(2) as executor:
        two = write_token_shards(docs_dir, tokenizer_file, tmp_path / "w2", small_units, executor)
    assert two == first
    assert folder_bytes(tmp_path / "w2") == folder_bytes(tmp_path / "a")

    # The `tokenizers` encoder writes the very same ids as tiktoken.
    hf = write_token_shards(
        docs_dir, tokenizer_file, tmp_path / "hf", cfg.model_copy(update={"encoder": "tokenizers"})
    )
    assert hf["stats"]["encoder"] == "tokenizers"
    assert hf["stats"]["encoder_checked_documents"] == 0
    assert hf["counts"] == first["counts"]
    assert folder_bytes(tmp_path / "hf") == folder_bytes(tmp_path / "a")

    # A rerun into a folder that holds more, smaller shards from before leaves none behind.
    write_token_shards(
        docs_dir, tokenizer_file, tmp_path / "b", cfg.model_copy(update={"tokens_per_shard": 1000})
    )
    assert write_token_shards(docs_dir, tokenizer_file, tmp_path / "b", cfg) == first
    assert folder_bytes(tmp_path / "b") == folder_bytes(tmp_path / "a")


def test_split_depends_on_the_id_not_on_order_or_shard(botchan_corpus, botchan_tokenizer, tmp_path):
    docs_dir, docs = botchan_corpus
    tokenizer_file = botchan_tokenizer[0] / "tokenizer.json"
    cfg = ShardsConfig(val_fraction=0.2)
    first = write_token_shards(docs_dir, tokenizer_file, tmp_path / "a", cfg)
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


def test_auto_encoder_falls_back_when_tiktoken_disagrees(
    botchan_corpus, botchan_tokenizer, tmp_path
):
    """A vocabulary entry that no merge produces: tiktoken forms it, `tokenizers` never does."""
    docs_dir, _ = botchan_corpus
    spec = json.loads((botchan_tokenizer[0] / "tokenizer.json").read_text())
    # drop the first learned merge ("t" + "h" or the like): its token stays in the vocabulary
    dropped = spec["model"]["merges"].pop(0)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(spec))
    tokenizer_file = tmp_path / "tok" / "tokenizer.json"
    texts = ["".join(dropped) + "xq", "the third thing"]
    assert TextEncoder(tokenizer_file, "tiktoken").encode_batch(texts) != TextEncoder(
        tokenizer_file, "tokenizers"
    ).encode_batch(texts)

    cfg = ShardsConfig(val_fraction=0.2)
    auto = write_token_shards(docs_dir, tokenizer_file, tmp_path / "auto", cfg)
    assert auto["stats"]["encoder"] == "tokenizers"
    assert "tiktoken and tokenizers differ" in auto["stats"]["encoder_fallback_reason"]
    hf_cfg = cfg.model_copy(update={"encoder": "tokenizers"})
    write_token_shards(docs_dir, tokenizer_file, tmp_path / "hf", hf_cfg)
    assert folder_bytes(tmp_path / "auto") == folder_bytes(tmp_path / "hf")
    # Forced tiktoken is taken at its word: other (still lossless) ids.
    tk_cfg = cfg.model_copy(update={"encoder": "tiktoken"})
    forced = write_token_shards(docs_dir, tokenizer_file, tmp_path / "tk", tk_cfg)
    assert forced["stats"]["encoder"] == "tiktoken"
    assert folder_bytes(tmp_path / "tk") != folder_bytes(tmp_path / "hf")


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

    for encoder in ("tiktoken", "tokenizers"):
        out = tmp_path / encoder
        cfg = ShardsConfig(val_fraction=0.3, encoder=encoder)
        manifest = write_token_shards(docs_dir, tmp_path / "tok", out, cfg)
        tokenizer = load_tokenizer(tmp_path / "tok")
        decoded = []
        for split in ("train", "val"):
            tokens = read_split(out, split)
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


def test_ids_above_65535_are_stored_as_uint32(botchan_corpus, botchan_tokenizer, tmp_path):
    """The trained tokenizer with every id moved up by 70,000: 16 bits no longer hold an id."""
    docs_dir, _ = botchan_corpus
    spec = json.loads((botchan_tokenizer[0] / "tokenizer.json").read_text())
    spec["model"]["vocab"] = {token: i + 70_000 for token, i in spec["model"]["vocab"].items()}
    for token in spec["added_tokens"]:
        token["id"] += 70_000
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(spec))
    cfg = ShardsConfig(val_fraction=0.2)

    manifest = write_token_shards(docs_dir, tmp_path / "tok", tmp_path / "wide", cfg)
    narrow = write_token_shards(docs_dir, botchan_tokenizer[0], tmp_path / "narrow", cfg)

    stats = manifest["stats"]
    assert (stats["dtype"], stats["vocab_size"], stats["eot_id"]) == ("uint32", 71_000, 70_000)
    assert stats["encoder"] == "tiktoken"
    assert manifest["counts"] == narrow["counts"]
    for split in ("train", "val"):
        assert read_header(split_paths(tmp_path / "wide", split)[0])[0] == np.uint32
        wide = read_split(tmp_path / "wide", split)
        assert wide.dtype == np.uint32
        assert np.array_equal(
            wide, read_split(tmp_path / "narrow", split).astype(np.uint32) + 70_000
        )


# ---------------------------------------------------------------------------- the reader


def test_reader_memory_maps_the_shards_and_yields_shifted_windows(
    botchan_corpus, botchan_tokenizer, tmp_path
):
    """pipeline.train.data reads the shards written here: windows of block_size + 1 tokens
    from memory-mapped files, at random positions for training and in order for validation."""
    docs_dir, _ = botchan_corpus
    cfg = ShardsConfig(val_fraction=0.2, tokens_per_shard=20_000)
    write_token_shards(docs_dir, botchan_tokenizer[0], tmp_path, cfg)
    paths = split_paths(tmp_path, "train")
    assert all(isinstance(load_tokens(path), np.memmap) for path in paths)
    shards = [np.asarray(load_tokens(path)) for path in paths]
    block = 64

    windows = TokenWindows(paths, block + 1, "train")
    assert windows.num_windows == sum(len(s) - block for s in shards)
    x, y = RandomTrainBatches(windows, batch_size=8, seed=3).batch(0)
    assert x.shape == y.shape == (8, block) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x.numpy(), y.numpy(), strict=True):
        window = np.concatenate([row_x, row_y[-1:]])
        # each window is block + 1 consecutive tokens of one shard (never across two)
        assert any(_contains(shard, window) for shard in shards)

    val_paths = split_paths(tmp_path, "val")
    val = FixedValWindows(TokenWindows(val_paths, block + 1, "val"), count=10)
    assert np.all(np.diff(val.indices) > 0)  # in order
    stream = np.concatenate([np.asarray(load_tokens(p)) for p in val_paths])
    first_x, first_y = val[0]
    assert first_x.tolist() == stream[:block].tolist()
    assert first_y.tolist() == stream[1 : block + 1].tolist()


def _contains(haystack: np.ndarray, needle: np.ndarray) -> bool:
    starts = np.flatnonzero(haystack[: len(haystack) - len(needle) + 1] == needle[0])
    return any(np.array_equal(haystack[s : s + len(needle)], needle) for s in starts)
