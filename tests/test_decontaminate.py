"""Decontamination: real evaluation examples planted in real news articles are found (verbatim
and lightly edited), clean news is left alone, the index is cached by the eval files' content,
drop and cut leave what they should, and the report and quarantine name each eval example."""

from __future__ import annotations

import gzip
import json
import random
import re
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import ConfigError, validate_config
from pipeline.decontaminate import read_matches, run_decontaminate
from pipeline.decontaminate.examples import eval_examples
from pipeline.decontaminate.ngrams import WindowHasher, normalized_words, word_value
from pipeline.dedup.exact import dedup_key
from pipeline.documents import iter_documents, make_document, write_documents
from pipeline.quarantine import Quarantine, read_quarantine

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BBC = SHARED / "news" / "bbc_news_fulltext_shared.jsonl.gz"
needs_shared = pytest.mark.skipif(not BBC.is_file(), reason="../shared/data is not here")
EVAL_TASKS = [
    {"type": "hellaswag", "path": "eval/hellaswag/hellaswag_val_shared.jsonl.gz"},
    {"type": "lambada", "path": "eval/lambada/lambada_openai_test_shared.jsonl.gz"},
    {"type": "qa", "name": "squad", "path": "eval/squad/squad_v2_dev_subset_shared.json"},
    {
        "type": "summarization",
        "name": "xsum",
        "path": "summarization/xsum_test_shared.jsonl.gz",
        "article_field": "document",
    },
]


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=200))
@settings(max_examples=300, deadline=None)
def test_the_ascii_fast_path_gives_the_same_words_as_the_unicode_path(text):
    assert normalized_words(text) == dedup_key(text).split()


def test_case_and_punctuation_do_not_change_the_words():
    assert normalized_words("Hello, World! It's   «fine»") == ["hello", "world", "its", "fine"]
    assert normalized_words("HELLO world; it's fine.") == ["hello", "world", "its", "fine"]


def test_window_hashes_are_the_polynomial_of_each_window():
    words = [f"w{i % 7}" for i in range(40)]
    values = np.array([word_value(w) for w in words], dtype=np.uint64)
    hasher = WindowHasher(values)
    p = 0x9E3779B97F4A7C15
    for m in (1, 5, 13, 40):
        expected = []
        for start in range(len(words) - m + 1):
            h = 0
            for value in values[start : start + m].tolist():
                h = (h * p + value) % 2**64
            expected.append(h)
        assert hasher.windows(m).tolist() == expected
    assert len(hasher.windows(41)) == 0


def _config(tmp_path: Path, **decontaminate) -> object:
    return validate_config(
        {
            "sources": [{"type": "jsonl", "path": str(BBC)}],
            "base_dir": str(SHARED),
            "evaluate": {"tasks": [{"type": "heldout"}, *EVAL_TASKS]},
            "decontaminate": {"enabled": True, **decontaminate},
        }
    )


def _edit(text: str, rng: random.Random) -> str:
    """A light edit: case changed, punctuation changed, one word replaced (not the first or
    last, as a person rewording a sentence would)."""
    words = text.split()
    if len(words) > 4:
        at = rng.randrange(1, len(words) - 1)
        words[at] = "zzyzx"
    edited = " ".join(words)
    edited = edited.upper() if rng.random() < 0.5 else edited.lower()
    return edited.replace(",", ";").replace(".", "!").replace("'", "")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """300 real BBC articles; into 40 of them a verbatim copy of a real eval example, into 40
    others a lightly edited copy; the rest untouched. Run through the stage (drop)."""
    if not BBC.is_file():
        pytest.skip("../shared/data is not here")
    tmp = tmp_path_factory.mktemp("planted")
    config = _config(tmp)
    with Quarantine(tmp) as scratch:
        examples = [
            e for e in eval_examples(config, scratch) if len(normalized_words(e.text)) >= 13
        ]
    rng = random.Random(7)
    chosen = rng.sample(examples, 80)
    with gzip.open(BBC, "rt", encoding="utf-8") as handle:
        articles = [json.loads(line) for line in handle][:300]
    docs, planted_ids = [], {}
    for number, article in enumerate(articles):
        text = article["text"]
        if number < 80:
            example = chosen[number]
            copy = example.text if number < 40 else _edit(example.text, rng)
            paragraphs = text.split("\n")
            cut = rng.randrange(1, max(2, len(paragraphs)))
            text = "\n".join([*paragraphs[:cut], copy, *paragraphs[cut:]])
            planted_ids[f"bbc-{number}"] = (example, "verbatim" if number < 40 else "edited")
        docs.append(make_document(id=f"bbc-{number}", text=text, source="bbc"))
    in_dir = tmp / "in"
    write_documents(docs, in_dir, max_docs=100)
    out = tmp / "out"
    body = run_decontaminate(in_dir, out, config, tmp / "cache")
    return {"config": config, "body": body, "out": out, "planted": planted_ids, "tmp": tmp,
            "in": in_dir}  # fmt: skip


@needs_shared
def test_every_verbatim_copy_and_nearly_every_edited_copy_is_found(planted):
    matches = read_matches(planted["out"])
    found = {(m["id"], m["set"], m["example_id"]) for m in matches}
    recall = {"verbatim": [], "edited": []}
    for doc_id, (example, kind) in planted["planted"].items():
        recall[kind].append((doc_id, example.set, example.example_id) in found)
    assert np.mean(recall["verbatim"]) == 1.0
    assert np.mean(recall["edited"]) >= 0.95
    # clean real news: no article without a planted copy was touched
    false_positives = {m["id"] for m in matches} - set(planted["planted"])
    assert false_positives == set()


@needs_shared
def test_dropped_documents_are_quarantined_with_their_eval_set_and_example(planted):
    body = planted["body"]
    assert body["counts"]["input"] == 300
    assert body["counts"]["dropped"] == body["counts"]["contaminated"] >= 78
    assert body["counts"]["kept"] == 300 - body["counts"]["dropped"]
    kept = {d["id"] for d in iter_documents(planted["out"])}
    assert not kept & {e["locator"] for e in read_quarantine(planted["out"])}
    entries = {e["locator"]: e for e in read_quarantine(planted["out"])}
    doc_id, (example, _) = next(iter(planted["planted"].items()))
    assert entries[doc_id]["reason"] == "contaminated"
    assert {"set": example.set, "example_id": example.example_id} in entries[doc_id]["matches"]
    sets = body["contamination"]["sets"]
    assert set(sets) == {"hellaswag", "lambada", "squad", "xsum"}
    assert sum(s["documents"] for s in sets.values()) >= body["counts"]["dropped"]
    assert all(s["found"] <= s["examples"] for s in sets.values())


@needs_shared
def test_the_eval_index_is_built_once_and_cached_by_content(planted, tmp_path):
    config, tmp = planted["config"], planted["tmp"]
    assert planted["body"]["index"]["built"]
    again = run_decontaminate(planted["in"], tmp_path / "again", config, tmp / "cache")
    assert not again["index"]["built"]
    assert again["index"]["key"] == planted["body"]["index"]["key"]
    assert again["counts"] == planted["body"]["counts"]
    # a changed eval file is a new index
    lambada = tmp_path / "lambada.jsonl"
    lambada.write_text(json.dumps({"text": "a passage " * 20}) + "\n", encoding="utf-8")
    changed = validate_config(
        {
            **config.model_dump(mode="json"),
            "evaluate": {"tasks": [{"type": "lambada", "path": str(lambada)}]},
        }  # fmt: skip
    )
    other = run_decontaminate(planted["in"], tmp_path / "other", changed, tmp / "cache")
    assert other["index"]["built"] and other["index"]["key"] != again["index"]["key"]


@needs_shared
def test_cut_removes_the_copy_and_keeps_the_article(planted, tmp_path):
    config = _config(tmp_path, action="cut", cut_margin_chars=20, min_doc_words=20)
    body = run_decontaminate(planted["in"], tmp_path / "cut", config, planted["tmp"] / "cache")
    assert body["counts"]["cut"] >= 70 and body["counts"]["kept"] == 300 - body["counts"]["dropped"]
    docs = {d["id"]: d["text"] for d in iter_documents(tmp_path / "cut")}
    doc_id, (example, _) = next(iter(planted["planted"].items()))
    assert doc_id in docs
    example_words = " ".join(normalized_words(example.text))
    assert example_words not in " ".join(normalized_words(docs[doc_id]))
    assert len(docs[doc_id].split()) > 50  # the rest of the article is still there
    reasons = {e["reason"] for e in read_quarantine(tmp_path / "cut")}
    assert "contaminated_span_cut" in reasons


@needs_shared
def test_report_only_keeps_every_document(planted, tmp_path):
    config = _config(tmp_path, action="report")
    body = run_decontaminate(planted["in"], tmp_path / "rep", config, planted["tmp"] / "cache")
    assert body["counts"]["kept"] == 300 and body["counts"]["contaminated"] >= 78
    assert body["contamination"]["action"] == "report"


def test_short_examples_are_matched_whole_and_tiny_ones_counted(tmp_path):
    data = tmp_path / "mc.jsonl"
    rows = [
        {"context": "the quick brown fox jumps over", "choices": ["the lazy dog", "x"], "label": 0},
        {"context": "too short", "choices": ["yes", "no"], "label": 1},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = validate_config(
        {
            "sources": [{"type": "jsonl", "path": "x"}],
            "base_dir": str(tmp_path),
            "evaluate": {"tasks": [{"type": "multiple_choice", "name": "mc", "path": str(data)}]},
            "decontaminate": {"enabled": True},
        }
    )
    texts = [
        "Yesterday The quick brown fox, jumps over the lazy dog! said a reader.",
        "The quick brown fox jumps over the sleepy cat, said nobody at all today.",
    ]
    docs = [make_document(id=f"d{i}", text=t, source="web") for i, t in enumerate(texts)]
    write_documents(docs, tmp_path / "in", 10)
    body = run_decontaminate(tmp_path / "in", tmp_path / "out", config, tmp_path / "cache")
    assert body["contamination"]["sets"]["mc"] == {
        "examples": 2,
        "too_short": 1,
        "found": 1,
        "found_fraction": 0.5,
        "documents": 1,
    }
    assert [d["id"] for d in iter_documents(tmp_path / "out")] == ["d1"]


def test_an_unknown_task_name_is_a_config_error(tmp_path):
    config = validate_config(
        {
            "sources": [{"type": "jsonl", "path": "x"}],
            "decontaminate": {"enabled": True, "tasks": ["hellaswag"]},
        }
    )
    with pytest.raises(
        ConfigError, match="decontaminate.tasks: no task with a file named hellaswag"
    ):
        run_decontaminate(tmp_path, tmp_path / "out", config, tmp_path / "cache")


@needs_shared
def test_clean_real_news_has_no_false_positives_against_real_eval_sets(tmp_path):
    """Every BBC and AG News article of shared/ against HellaSwag, LAMBADA, SQuAD, XSum."""
    config = _config(tmp_path, action="report")
    docs = []
    for name in ("bbc_news_fulltext_shared", "ag_news_test_shared"):
        with gzip.open(SHARED / "news" / f"{name}.jsonl.gz", "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle):
                text = json.loads(line)["text"]
                docs.append(make_document(id=f"{name}-{number}", text=text, source=name))
    write_documents(docs, tmp_path / "in", 5000)
    body = run_decontaminate(tmp_path / "in", tmp_path / "out", config, tmp_path / "cache")
    assert body["counts"]["input"] == len(docs) > 6000
    assert body["counts"]["contaminated"] == 0, read_matches(tmp_path / "out")[:5]


def test_punctuation_only_tokens_line_up_when_cutting():
    from pipeline.decontaminate.stage import Hit, cut_spans

    text = "Intro text here - and then: ALPHA beta, gamma delta -- epsilon. Outro words follow."
    words = normalized_words(text)
    start = words.index("alpha")
    rest, removed = cut_spans(text, words, [Hit(start, 5, 0)], margin=0)
    assert removed == ["ALPHA beta, gamma delta -- epsilon."]
    assert re.sub(r"\s+", " ", rest) == "Intro text here - and then: Outro words follow."
    assert set(string.punctuation) & set(removed[0])
