"""Source mixtures in the shards stage: real news from three sources mixed by weights and by
token budgets, each source within 2% of what was asked, the same shards for any number of
workers, the val split untouched, and a mixture that the documents cannot give is refused."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ConfigError, ShardsConfig, TokenizerConfig, validate_config
from pipeline.documents import make_document, write_documents
from pipeline.parallel import ProcessExecutor
from pipeline.tokenizer import load_tokens, split_paths, train_tokenizer
from pipeline.tokenizer.encode import write_token_shards
from pipeline.tokenizer.mixture import MixtureError, plan_copies

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
NEWS = {
    "bbc": (SHARED / "news" / "bbc_news_fulltext_shared.jsonl.gz", "text", 600),
    "ag": (SHARED / "news" / "ag_news_test_shared.jsonl.gz", "text", 3000),
    "cnn": (SHARED / "summarization" / "cnn_dailymail_train_sample_shared.jsonl.gz", "article", 67),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not here")
    tmp = tmp_path_factory.mktemp("mixture")
    docs = []
    for source, (path, field, limit) in NEWS.items():
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle):
                if number == limit:
                    break
                text = json.loads(line)[field]
                docs.append(make_document(id=f"{source}-{number}", text=text, source=source))
    docs.sort(key=lambda d: d["id"][-3:])  # sources interleaved, as a real corpus would be
    write_documents(docs, tmp / "docs", 500)
    train_tokenizer(tmp / "docs", tmp / "tok", TokenizerConfig(vocab_size=2000))
    natural = write_token_shards(tmp / "docs", tmp / "tok", tmp / "natural", ShardsConfig())
    return tmp, natural


def _source_tokens(out: Path, body: dict) -> dict[str, int]:
    return {s: e["tokens"] for s, e in body["mixture"]["sources"].items()}


@pytest.mark.parametrize(
    "mixture",
    [
        {"weights": {"bbc": 0.5, "ag": 0.3, "cnn": 0.2}},  # cnn up-sampled, bbc down
        {"weights": {"bbc": 1, "ag": 1, "cnn": 2}, "total_tokens": 150_000},
        {"tokens": {"bbc": 60_000, "ag": 30_000, "cnn": 0}},
    ],
)
def test_each_source_is_within_two_percent_of_what_was_asked(corpus, tmp_path, mixture):
    tmp, natural = corpus
    cfg = ShardsConfig(mixture=mixture, docs_per_unit=500)
    body = write_token_shards(tmp / "docs", tmp / "tok", tmp_path, cfg)
    report = body["mixture"]
    train = sum(len(load_tokens(p)) for p in split_paths(tmp_path, "train"))
    assert train == body["counts"]["train_tokens"] == report["train_tokens"]
    written = _source_tokens(tmp_path, body)
    if "weights" in mixture:
        total = sum(mixture["weights"].values())
        for source, weight in mixture["weights"].items():
            assert abs(written[source] / train - weight / total) <= 0.02, (source, written)
        if "total_tokens" in mixture:
            assert abs(train / mixture["total_tokens"] - 1) <= 0.02
    else:
        for source, budget in mixture["tokens"].items():
            assert abs(written[source] - budget) <= 0.02 * budget, (source, written)
    assert report["max_share_error"] <= 0.02
    # the val split is never resampled
    assert body["counts"]["val_tokens"] == natural["counts"]["val_tokens"]
    val = [load_tokens(p) for p in split_paths(tmp_path, "val")]
    assert np.array_equal(
        np.concatenate(val),
        np.concatenate([load_tokens(p) for p in split_paths(tmp / "natural", "val")]),
    )


def test_up_sampling_repeats_documents_after_a_whole_pass(corpus, tmp_path):
    tmp, natural = corpus
    cfg = ShardsConfig(mixture={"weights": {"bbc": 0, "ag": 0, "cnn": 1}, "total_tokens": 250_000})
    body = write_token_shards(tmp / "docs", tmp / "tok", tmp_path, cfg)
    cnn = body["mixture"]["sources"]["cnn"]
    assert cnn["rate"] > 2 and cnn["documents_written"] > 2 * cnn["documents"]
    stream = np.concatenate([load_tokens(p) for p in split_paths(tmp_path, "train")])
    documents = np.split(stream, np.flatnonzero(stream == 0)[:-1] + 1)
    first_pass = documents[: cnn["documents"]]
    assert len({d.tobytes() for d in first_pass}) == cnn["documents"]  # all distinct
    assert documents[cnn["documents"]].tobytes() == first_pass[0].tobytes()  # then again


def test_the_same_shards_for_any_number_of_workers(corpus, tmp_path):
    tmp, _ = corpus
    cfg = ShardsConfig(mixture={"weights": {"bbc": 2, "ag": 1, "cnn": 1}}, docs_per_unit=400)
    write_token_shards(tmp / "docs", tmp / "tok", tmp_path / "one", cfg)
    with ProcessExecutor(2) as executor:
        write_token_shards(tmp / "docs", tmp / "tok", tmp_path / "two", cfg, executor=executor)
    for split in ("train", "val"):
        one = [p.read_bytes() for p in split_paths(tmp_path / "one", split)]
        two = [p.read_bytes() for p in split_paths(tmp_path / "two", split)]
        assert one == two


def test_a_mixture_the_documents_cannot_give_is_refused():
    tokens = np.array([10, 20, 30])
    with pytest.raises(MixtureError, match="no value for source.*ag"):
        plan_copies(
            ["bbc", "ag", "bbc"],
            ["a", "b", "c"],
            tokens,
            ShardsConfig(mixture={"weights": {"bbc": 1}}).mixture,
        )
    with pytest.raises(MixtureError, match="no train documents of source.*web"):
        plan_copies(
            ["bbc"] * 3,
            ["a", "b", "c"],
            tokens,
            ShardsConfig(mixture={"weights": {"bbc": 1, "web": 1}}).mixture,
        )
    copies, report = plan_copies(
        ["bbc"] * 3,
        ["a", "b", "c"],
        tokens,
        ShardsConfig(mixture={"weights": {"bbc": 1, "web": 0}}).mixture,
    )
    assert copies.tolist() == [1, 1, 1] and report["train_tokens"] == 60
    with pytest.raises(ConfigError, match="give weights .* or tokens"):
        validate_config({"sources": [{"type": "jsonl", "path": "x"}], "shards": {"mixture": {}}})
    with pytest.raises(ConfigError, match="needs split: hash"):
        validate_config(
            {
                "sources": [{"type": "jsonl", "path": "x"}],
                "shards": {"split": "position", "mixture": {"weights": {"a": 1}}},
            }
        )
