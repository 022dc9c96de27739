"""Lossless: decode(encode(x)) == x for any Unicode string, with both encoders (property-based).

Strings that UTF-8 cannot hold (lone surrogates) are resolved first, by `valid_unicode`: a high
and low surrogate pair becomes its character, each lone surrogate becomes U+FFFD. The property
is then decode(encode(x)) == valid_unicode(x), and valid_unicode(x) == x for every string
without surrogates.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_tokenizer import botchan_documents, write_corpus

from pipeline.config import TokenizerConfig
from pipeline.tokenizer import TextEncoder, train_tokenizer, valid_unicode

# Pieces that stress a byte-level BPE: multi-byte scripts, emoji sequences (ZWJ, skin tones,
# flags), combining marks, controls and odd whitespace, digits, and the special tokens' text.
PIECES = [
    "the", " the", "The", "'s", "'LL", " 1984", "3.14", "١٢٣",
    "東京", "中文", "한국어", "ру́сский", "עברית", "العربية", "हिन्दी",
    "👩‍👩‍👧‍👦", "👍🏽", "🇯🇵", "🤖", "e\u0301", "\u0000", "\x7f", "\x1b[0m", "\u200b", "\ufeff",
    "\r\n", "\n\n\n", "\t", "  ", "\u00a0", "\u2028", "\u3000", "\ufffd",
    "<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|", "|>",
    "\ud800", "\udfff", "\ud83d\ude00", "\ude00\ud83d",
]  # fmt: skip

any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=80)  # surrogates too
piece_text = st.lists(st.one_of(st.sampled_from(PIECES), any_text), max_size=12).map("".join)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, TextEncoder]:
    root = tmp_path_factory.mktemp("lossless")
    write_corpus(root / "docs", botchan_documents(), max_docs=50)
    train_tokenizer(root / "docs", root / "tok", TokenizerConfig(vocab_size=800))
    return {name: TextEncoder(Path(root / "tok"), name) for name in ("tiktoken", "tokenizers")}


@FAST
@given(text=st.one_of(any_text, piece_text))
@example(text="\ud800")
@example(text="a\udc00b\ud83d\ude00c")
@example(text="<|endoftext|><|endoftext|>")
@example(text="")
def test_decode_inverts_encode(encoders, text):
    expected = valid_unicode(text)
    expected.encode("utf-8")  # always valid UTF-8
    assert valid_unicode(expected) == expected
    ids = {}
    for name, encoder in encoders.items():
        ids[name] = encoder.encode(text)
        assert encoder.decode(ids[name]) == expected
        # special-token text is text: no control ids ever come out of encoding
        assert not set(ids[name]) & {0, 1, 2, 3}
    # the two encoders give the same ids (what lets the shards stage use tiktoken)
    assert ids["tiktoken"] == ids["tokenizers"]


@FAST
@given(text=any_text)
def test_strings_without_surrogates_are_kept_as_they_are(text):
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        assert valid_unicode(text) != text
    else:
        assert valid_unicode(text) is text


def test_surrogates_are_resolved_as_utf16_decoders_do():
    assert valid_unicode("\ud83d\ude00") == "😀"  # a pair: its character
    assert valid_unicode("a\ud800b") == "a\ufffdb"  # lone high
    assert valid_unicode("\udfff") == "\ufffd"  # lone low
    assert valid_unicode("\ude00\ud83d") == "\ufffd\ufffd"  # reversed pair: two lone ones


def test_a_batch_with_one_bad_string_encodes_the_others_unchanged(encoders):
    texts = ["plain text", "bad \ud800 here", "東京 👍🏽"]
    for encoder in encoders.values():
        batch = encoder.encode_batch(texts)
        assert batch == [encoder.encode(valid_unicode(text)) for text in texts]
        assert [encoder.decode(ids) for ids in batch] == [valid_unicode(t) for t in texts]
