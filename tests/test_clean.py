"""Clean: normalization, each quality rule (a document that trips it, one that passes), the
manifest and quarantine of a real run, and re-tuning thresholds from the stored signals."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.clean import (
    SIGNALS_FILE,
    compute_signals,
    normalize_text,
    quality_rules,
    rule_effects,
    run_clean,
)
from pipeline.clean.quality import first_failed_rule
from pipeline.config import CleanConfig
from pipeline.documents import document_id, iter_documents, make_document, write_documents
from pipeline.quarantine import read_quarantine

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def sample_articles(n: int) -> list[dict]:
    with gzip.open(SAMPLE / "wikitext2_test_articles.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


def sample_snippets() -> list[dict]:
    lines = (SAMPLE / "ftfy_text_snippets.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def paragraph() -> str:
    """A real paragraph of ordinary prose that passes every default rule."""
    return sample_articles(1)[0]["text"].split("\n\n")[0]


def write_input(docs: list[dict], folder: Path, max_docs: int) -> Path:
    folder.mkdir(parents=True)
    write_documents(docs, folder, max_docs=max_docs)
    return folder


def doc(text: str, n: int = 0, source: str = "test") -> dict:
    return make_document(id=document_id("test", f"doc:{n}"), text=text, source=source)


def reason_for(text: str, cfg: CleanConfig | None = None) -> str | None:
    rule = first_failed_rule(quality_rules(cfg or CleanConfig()), compute_signals(text))
    return rule.name if rule else None


# ---------------------------------------------------------------------------- normalization


def test_normalize_text():
    assert normalize_text("e\u0301t\u00e9") == "\u00e9t\u00e9"  # NFC composes
    assert normalize_text("\ufb01ne", "NFC") == "\ufb01ne"  # NFC keeps the ligature
    assert normalize_text("\ufb01ne", "NFKC") == "fine"  # NFKC folds it
    assert normalize_text("\ufeffa\x00b\x07c\td\x1be") == "abc\tde"
    assert normalize_text("one  \r\ntwo\t \rthree") == "one\ntwo\nthree"
    assert normalize_text("a\n\n\n\n\nb\n\nc\n") == "a\n\nb\n\nc"
    assert normalize_text("  \n\x0c\n ") == ""


# ------------------------------------------------------------------------------ the rules


def test_a_good_paragraph_passes_every_rule(paragraph):
    assert reason_for(paragraph) is None
    signals = compute_signals(paragraph)
    assert signals["word_count"] > 100
    assert 4 < signals["mean_word_length"] < 6
    assert signals["alpha_word_ratio"] > 0.9
    assert signals["symbol_word_ratio"] == 0 and signals["duplicate_line_fraction"] == 0


def test_min_words_rejects_short_snippets(paragraph):
    snippet = sample_snippets()[0]["text"]  # "He's Justin❤"
    assert compute_signals(snippet)["word_count"] == 2
    assert reason_for(snippet) == "min_words"
    # Bare punctuation is not a word.
    assert compute_signals("-- * -- ... ok")["word_count"] == 1


def test_max_words(paragraph):
    assert reason_for(paragraph, CleanConfig(max_words=50)) == "max_words"
    assert reason_for(paragraph, CleanConfig(max_words=10_000)) is None


def test_min_mean_word_length(paragraph):
    spelled_out = " ".join(c for c in paragraph if not c.isspace())  # "R o b e r t ..."
    assert compute_signals(spelled_out)["mean_word_length"] == 1
    assert reason_for(spelled_out) == "min_mean_word_length"


def test_max_mean_word_length():
    article = sample_articles(1)[0]["text"]
    glued = " ".join(article.replace(" ", "").split(".")[:30])  # run-together sentences
    assert compute_signals(glued)["mean_word_length"] > 12
    assert reason_for(glued) == "max_mean_word_length"


def test_min_alpha_word_ratio():
    table = "\n".join(
        f"{year} {year % 97} {year * 3 % 1000} 1.{year % 10}" for year in range(1950, 1980)
    )
    table = "Results by year:\n" + table
    signals = compute_signals(table)
    assert signals["alpha_word_ratio"] < 0.1 and 2.5 < signals["mean_word_length"] < 12
    assert reason_for(table) == "min_alpha_word_ratio"


def test_max_symbol_word_ratio(paragraph):
    words = paragraph.split()
    hashtags = " ".join(f"#{w}" if i % 3 == 0 else w for i, w in enumerate(words))
    assert compute_signals(hashtags)["symbol_word_ratio"] > 0.3
    assert reason_for(hashtags) == "max_symbol_word_ratio"
    trailing = " ".join(w + ("..." if i % 8 == 0 else "") for i, w in enumerate(words))
    assert reason_for(trailing) == "max_symbol_word_ratio"
    assert compute_signals("one two three four\u2026")["symbol_word_ratio"] == 0.25


def test_max_duplicate_line_fraction(paragraph):
    sentences = [s.strip() + "." for s in paragraph.split(".") if s.strip()]
    menu = ["Home", "News", "Contact us", "Privacy policy"]
    page = "\n".join(sentences[:4] + menu + sentences[4:6] + menu + sentences[6:7] + menu)
    assert compute_signals(page)["duplicate_line_fraction"] == pytest.approx(8 / 19, abs=1e-4)
    assert reason_for(page) == "max_duplicate_line_fraction"
    assert reason_for("\n".join(sentences)) is None


def test_first_failing_rule_names_the_reason_and_thresholds_are_inclusive(paragraph):
    words = paragraph.split()[:20]
    exactly_twenty = " ".join(words)
    assert compute_signals(exactly_twenty)["word_count"] == 20
    assert reason_for(exactly_twenty, CleanConfig(min_words=20)) is None
    assert reason_for(exactly_twenty, CleanConfig(min_words=21)) == "min_words"
    # Too short AND spelled out: the rule tried first wins.
    assert reason_for("a b c") == "min_words"


# --------------------------------------------------------------------------------- the stage


def test_run_clean_on_real_documents(tmp_path):
    articles = sample_articles(30)
    snippets = sample_snippets()[:40]
    docs = [doc(a["text"], i, "wikitext2") for i, a in enumerate(articles)]
    docs += [doc(s["text"], 100 + i, "ftfy") for i, s in enumerate(snippets)]
    docs.append(doc("\x00\x01 \ufeff \n\n", 999, "ftfy"))  # nothing left once normalized
    write_input(docs, tmp_path / "in", max_docs=25)

    manifest = run_clean(tmp_path / "in", tmp_path / "out", CleanConfig(max_docs_per_shard=10))
    counts = manifest["counts"]
    assert counts["input"] == len(docs) == 71
    assert counts["kept"] + counts["rejected"] == counts["input"]
    assert counts["rejected_by_rule"]["empty_text"] == 1
    assert counts["rejected_by_rule"]["min_words"] >= 35
    assert sum(counts["rejected_by_rule"].values()) == counts["rejected"]

    kept = list(iter_documents(tmp_path / "out"))
    assert len(kept) == counts["kept"]
    assert {d["id"] for d in docs[:30]} <= {d["id"] for d in kept}  # every article kept
    signals = json.loads(kept[0]["meta"])["signals"]
    assert set(signals) == {
        "word_count",
        "mean_word_length",
        "alpha_word_ratio",
        "symbol_word_ratio",
        "duplicate_line_fraction",
    }
    assert signals == compute_signals(kept[0]["text"])

    entries = read_quarantine(tmp_path / "out")
    assert len(entries) == counts["rejected"]
    short = next(e for e in entries if e["reason"] == "min_words")
    assert short["detail"] == "word_count=2 is below min_words=20"
    assert short["source"] == "ftfy" and short["locator"] == docs[30]["id"]
    example = manifest["examples_rejected"]["min_words"][0]
    # Rejected texts are shown normalized: the C1 control in this mojibake is gone.
    assert snippets[0]["text"] == "He's Justin\u00e2\x9d\u00a4"
    assert example == {"id": docs[30]["id"], "text": "He's Justin\u00e2\u00a4", "signal": 2.0}

    table = pq.read_table(tmp_path / "out" / SIGNALS_FILE)
    assert table.num_rows == len(docs)
    assert table.column("kept").to_pylist().count(True) == counts["kept"]


def test_rule_effects_match_a_real_rerun(tmp_path):
    articles = sample_articles(60)
    docs = [doc(a["text"], i) for i, a in enumerate(articles)]
    docs += [doc(s["text"], 100 + i) for i, s in enumerate(sample_snippets())]
    write_input(docs, tmp_path / "in", max_docs=50)
    run_clean(tmp_path / "in", tmp_path / "default", CleanConfig())

    stricter = CleanConfig(
        min_words=1500, max_duplicate_line_fraction=0.01, min_alpha_word_ratio=0.9
    )
    predicted = rule_effects(tmp_path / "default", stricter)
    rerun = run_clean(tmp_path / "in", tmp_path / "stricter", stricter)
    assert predicted == rerun["counts"]
    assert predicted["rejected"] > rule_effects(tmp_path / "default", CleanConfig())["rejected"]


def test_empty_input(tmp_path):
    (tmp_path / "in").mkdir()
    manifest = run_clean(tmp_path / "in", tmp_path / "out", CleanConfig())
    assert manifest["counts"] == {"input": 0, "kept": 0, "rejected": 0, "rejected_by_rule": {}}
    assert rule_effects(tmp_path / "out", CleanConfig())["input"] == 0
