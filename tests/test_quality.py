"""The quality stage: a classifier trained on reference text (WikiText-2 articles) against real
boilerplate-heavy web pages separates them by a wide margin; every document gets a score; the
keep rules keep what they say; the classifier is stored in a safe format, reloads to the same
scores, and a bad classifier file is refused with a clear error."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError, validate_config
from pipeline.documents import iter_documents, make_document, write_documents
from pipeline.quality import (
    CLASSIFIER_DIR,
    SCORES_FILE,
    ClassifierError,
    keep_decisions,
    load_classifier,
    run_quality,
)
from pipeline.quarantine import read_quarantine

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
PAGES = SHARED / "html" / "article_extraction_benchmark" / "html"
WIKI = REPO / "data" / "sample" / "wikitext2_test_articles.jsonl.gz"
BBC = SHARED / "news" / "bbc_news_fulltext_shared.jsonl.gz"


def _page_texts() -> list[str]:
    """Whole-page text of real news and blog pages: menus, footers, links and all."""
    from resiliparse.extract.html2text import extract_plain_text

    texts = []
    for path in sorted(PAGES.glob("*.html.gz")):
        html = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
        texts.append(extract_plain_text(html, main_content=False))
    return texts


def _config(base: Path, **quality) -> object:
    return validate_config(
        {
            "sources": [{"type": "jsonl", "path": "x"}],
            "base_dir": str(base),
            "ingest": {"langid": {"method": "none"}},
            "quality": {
                "enabled": True,
                "positives": [{"type": "jsonl", "name": "wikitext", "path": str(WIKI)}],
                **quality,
            },
        }
    )


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    if not PAGES.is_dir():
        pytest.skip("../shared/data is not here")
    tmp = tmp_path_factory.mktemp("quality")
    docs = [make_document(id=f"web-{i}", text=t, source="web") for i, t in enumerate(_page_texts())]
    with gzip.open(BBC, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            if number == 100:
                break
            text = json.loads(line)["text"]
            docs.append(make_document(id=f"bbc-{number}", text=text, source="news"))
    write_documents(docs, tmp / "in", 60)
    config = _config(tmp, negative_sources=["web"], keep_fraction=0.5)
    body = run_quality(tmp / "in", tmp / "out", config)
    return {"tmp": tmp, "body": body, "docs": docs, "config": config}


def test_the_classifier_separates_reference_text_from_boilerplate_pages(scored):
    trained = scored["body"]["quality"]["classifier"]["trained_on"]
    assert trained["heldout_positives"] >= 5 and trained["heldout_negatives"] >= 15
    metrics = scored["body"]["metrics"]
    assert metrics["classifier_auc"] >= 0.95  # chance is 0.5
    assert metrics["classifier_accuracy"] >= 0.85
    assert metrics["scoring_docs_per_second"] > 0


def test_every_document_is_scored_and_the_best_half_kept(scored):
    body, out = scored["body"], scored["tmp"] / "out"
    scores = pq.read_table(out / SCORES_FILE).to_pylist()
    assert [r["id"] for r in scores] == [d["id"] for d in scored["docs"]]
    assert body["counts"]["input"] == len(scored["docs"]) == 226
    assert body["counts"]["kept"] == 113 == sum(r["kept"] for r in scores)
    kept = list(iter_documents(out))
    assert {d["id"] for d in kept} == {r["id"] for r in scores if r["kept"]}
    lowest_kept = min(json.loads(d["meta"])["quality_score"] for d in kept)
    assert all(r["quality_score"] <= lowest_kept + 1e-6 for r in scores if not r["kept"])
    removed = read_quarantine(out)
    assert len(removed) == 113 and removed[0]["reason"] == "quality_not_in_top_fraction"
    assert "quality_score=" in removed[0]["detail"]
    # the news articles (not trained on) score above the raw web pages
    by_source = {}
    for row in scores:
        by_source.setdefault(row["id"].split("-")[0], []).append(row["quality_score"])
    assert np.median(by_source["bbc"]) > np.median(by_source["web"])
    report = body["quality"]
    assert sum(h["documents"] for h in report["histogram"]) == 226
    assert [d["decile"] for d in report["deciles"]] == [f"{q}%" for q in range(0, 101, 10)]
    assert all(d["text"] for d in report["deciles"])
    assert (out / "quality_scores.png").stat().st_size > 0


def test_a_stored_classifier_reloads_to_the_same_scores_and_is_reused(scored, tmp_path):
    folder = scored["tmp"] / "out" / CLASSIFIER_DIR
    assert sorted(p.name for p in folder.iterdir()) == ["classifier.json", "model.safetensors"]
    classifier = load_classifier(folder)
    config = _config(tmp_path, threshold=0.5)
    config = config.model_copy(
        update={
            "quality": config.quality.model_copy(
                update={"positives": [], "classifier": str(folder)}
            )
        }
    )
    body = run_quality(scored["tmp"] / "in", tmp_path / "reused", config)
    first = pq.read_table(scored["tmp"] / "out" / SCORES_FILE)["quality_score"].to_numpy()
    again = pq.read_table(tmp_path / "reused" / SCORES_FILE)["quality_score"].to_numpy()
    assert np.array_equal(first, again)
    assert body["counts"]["kept"] == int((again >= 0.5).sum())
    assert body["quality"]["classifier"]["reused_from"] == str(folder)
    texts = [d["text"] for d in scored["docs"][:5]]
    assert np.allclose(classifier.score(texts), first[:5], atol=1e-6)


def test_a_bad_classifier_file_is_refused_with_a_clear_error(scored, tmp_path):
    source = scored["tmp"] / "out" / CLASSIFIER_DIR
    bad = tmp_path / "bad"
    bad.mkdir()
    description = json.loads((source / "classifier.json").read_text())
    (bad / "classifier.json").write_text(json.dumps({**description, "hash_bits": 12}))
    (bad / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes())
    with pytest.raises(ClassifierError, match=r"expected tensors weights \[4096\]"):
        load_classifier(bad)
    import pickle

    (bad / "model.safetensors").write_bytes(pickle.dumps({"weights": [1.0]}))
    with pytest.raises(ClassifierError, match="not a safetensors file"):
        load_classifier(bad)
    (bad / "classifier.json").write_text(json.dumps({"format": "pickle"}))
    with pytest.raises(ClassifierError, match="not a llmpipe-hashed-ngram"):
        load_classifier(bad)
    (bad / "classifier.json").unlink()
    with pytest.raises(ClassifierError, match="no classifier.json at"):
        load_classifier(bad)
    with pytest.raises(ClassifierError, match="nowhere does not exist"):
        load_classifier(tmp_path / "nowhere")


def test_keep_rules():
    scores = np.array([0.2, 0.9, 0.5, 0.5, 0.1], dtype=np.float32)
    cfg = _config(Path("."), threshold=0.5).quality
    assert keep_decisions(scores, cfg).tolist() == [False, True, True, True, False]
    cfg = _config(Path("."), keep_fraction=0.6).quality
    assert keep_decisions(scores, cfg).tolist() == [False, True, True, True, False]
    cfg = _config(Path("."), keep_fraction=0.4).quality
    assert keep_decisions(scores, cfg).tolist() == [False, True, True, False, False]  # ties: first
    assert keep_decisions(scores, _config(Path(".")).quality).all()


def test_quality_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="quality: give positives"):
        validate_config({"sources": [{"type": "jsonl", "path": "x"}], "quality": {"enabled": True}})
    with pytest.raises(ConfigError, match="threshold or keep_fraction, not both"):
        _config(Path("."), threshold=0.5, keep_fraction=0.5)
    with pytest.raises(ConfigError, match="quality.keep_fraction"):
        _config(Path("."), keep_fraction=1.5)
