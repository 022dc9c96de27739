"""Clean: repairs and edits, each quality rule (a document that trips it, one that passes), the
manifest and quarantine of a real run, the same output for any number of workers, and
re-tuning thresholds from the stored signals."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.clean import (
    SIGNAL_NAMES,
    SIGNALS_FILE,
    c4_line_edits,
    clean_text,
    compute_signals,
    normalize_text,
    quality_rules,
    redact_pii,
    repair_unicode,
    rule_effects,
    run_clean,
)
from pipeline.clean.quality import first_failed_rule, language_code
from pipeline.config import CleanConfig
from pipeline.documents import document_id, iter_documents, make_document, write_documents
from pipeline.parallel import ProcessExecutor
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
    """A real paragraph of ordinary prose (144 words, 7 sentences) that passes every rule."""
    return sample_articles(1)[0]["text"].split("\n\n")[0]


@pytest.fixture(scope="module")
def article() -> str:
    """A whole real article ("Du Fu"): paragraphs and '== Heading ==' lines. (The first one,
    "Robert Boulter", repeats its film credits: Gopher's 5-gram rule rejects it, as datatrove's
    GopherRepetitionFilter does.)"""
    return sample_articles(2)[1]["text"]


def write_input(docs: list[dict], folder: Path, max_docs: int) -> Path:
    folder.mkdir(parents=True)
    write_documents(docs, folder, max_docs=max_docs)
    return folder


def doc(text: str, n: int = 0, source: str = "test", lang: str | None = None, **meta) -> dict:
    return make_document(
        id=document_id("test", f"doc:{n}"), text=text, source=source, lang=lang, meta=meta
    )


def reason_for(text: str, cfg: CleanConfig | None = None, lang: str | None = "en", score=1.0):
    signals = {**compute_signals(text), "lang": language_code(lang), "lang_score": score}
    rule = first_failed_rule(quality_rules(cfg or CleanConfig()), signals)
    return rule.name if rule else None


# -------------------------------------------------------------------- repairs and edits


def test_normalize_text():
    assert normalize_text("e\u0301t\u00e9") == "\u00e9t\u00e9"  # NFC composes
    assert normalize_text("\ufb01ne", "NFC") == "\ufb01ne"  # NFC keeps the ligature
    assert normalize_text("\ufb01ne", "NFKC") == "fine"  # NFKC folds it
    assert normalize_text("\ufeffa\x00b\x07c\td\x1be") == "abc\tde"
    assert normalize_text("one  \r\ntwo\t \rthree") == "one\ntwo\nthree"
    assert normalize_text("a\n\n\n\n\nb\n\nc\n") == "a\n\nb\n\nc"
    assert normalize_text("  \n\x0c\n ") == ""


def test_repair_unicode_fixes_real_mojibake_and_keeps_style():
    snippets = {s["text"]: s for s in sample_snippets()}
    assert repair_unicode("He's Justin\u00e2\x9d\u00a4") == "He's Justin\u2764"
    assert repair_unicode("caf\u00c3\u00a9 &amp; cr\u00c3\u00a8me") == "caf\u00e9 & cr\u00e8me"
    # What is not broken stays: curly quotes, ligatures, full-width punctuation, plain ASCII.
    for kept in ("\u201cquoted\u201d", "\ufb01ne", "\u3002\uff01", "plain ascii text"):
        assert repair_unicode(kept) == kept
    changed = sum(repair_unicode(t) != t for t in snippets)
    assert changed > len(snippets) // 3  # most of ftfy's own test cases are real mojibake


def test_c4_line_edits(article):
    cfg = CleanConfig()
    page = "\n".join(
        [
            "Please enable JavaScript to view the comments powered by Disqus.",
            "This site uses cookies to improve your experience.",
            "Share",
            "The council approved the plan on Tuesday.[1] It will cost $2m.[citation needed]",
            "",
            "A " + "x" * 1200 + " long token line.",
            "Critics said the plan came too late.",
        ]
    )
    edited, counts = c4_line_edits(page, cfg)
    assert edited == (
        "The council approved the plan on Tuesday. It will cost $2m.\n\n"
        "Critics said the plan came too late."
    )
    assert counts == {
        "lines_javascript": 1,
        "lines_policy": 1,
        "lines_too_few_words": 1,
        "lines_too_long_word": 1,
        "citations": 2,
    }
    strict = CleanConfig(c4_keep_only_terminal_punctuation_lines=True)
    headed, counts = c4_line_edits("== Early life ==\n\nHe was born in Leeds.", strict)
    assert headed == "He was born in Leeds." and counts["lines_no_terminal_punctuation"] == 1
    # A real article loses nothing but its citations under the defaults.
    assert c4_line_edits(article, cfg)[0] == article


def test_redact_pii():
    text = (
        "Write to jane.doe+news@example.co.uk or call +44 20 7946 0018, (555) 123-4567 or "
        "020 7946 0018. Server 8.8.8.8 and 2001:4860:4860::8888 answered; 192.168.0.1 is local."
    )
    redacted, counts = redact_pii(text, ["email", "ip", "phone"])
    assert redacted == (
        "Write to <EMAIL> or call <PHONE_NUMBER>, <PHONE_NUMBER> or "
        "<PHONE_NUMBER>. Server <IP_ADDRESS> and <IP_ADDRESS> answered; 192.168.0.1 is local."
    )
    assert counts == {"email": 1, "phone": 3, "ip": 2}
    # Years, scores, prices, dates, versions and times are not phone numbers or addresses.
    plain = "In 1998 2001 2004 they won 3-2, paid $12.50 on 2004-12-05, ran v1.2.3 at 12:30:45."
    assert redact_pii(plain, ["email", "ip", "phone"]) == (plain, {})
    assert redact_pii(text, ["email"])[1] == {"email": 1}


def test_clean_text_counts_each_edit():
    text, edits = clean_text(
        "Mail bob@example.org now, caf\u00c3\u00a9 is open.\nShare", CleanConfig()
    )
    assert text == "Mail <EMAIL> now, caf\u00e9 is open."
    assert edits == {
        "unicode_repaired_docs": 1,
        "c4_lines_too_few_words": 1,
        "pii_email": 1,
        "pii_docs": 1,
    }
    off = CleanConfig(fix_unicode=False, redact_pii=[], c4_min_words_per_line=0)
    assert (
        clean_text("caf\u00c3\u00a9 bob@example.org", off)[0] == "caf\u00c3\u00a9 bob@example.org"
    )


# ------------------------------------------------------------------------------ the rules


def test_a_good_paragraph_passes_every_rule(paragraph, article):
    assert reason_for(paragraph) is None and reason_for(article) is None
    boulter = sample_articles(1)[0]["text"]
    assert reason_for(boulter) == "max_duplicate_5gram_char_fraction"
    signals = compute_signals(paragraph)
    assert set(signals) == set(SIGNAL_NAMES)
    assert signals["word_count"] == 144 and signals["sentence_count"] == 7
    assert 4 < signals["mean_word_length"] < 6 and signals["stop_word_count"] == 3
    assert signals["alpha_word_ratio"] > 0.9 and signals["line_punct_ratio"] == 1
    assert (
        signals["duplicate_5gram_char_fraction"] == 0 and signals["top_2gram_char_fraction"] < 0.1
    )


def test_language_rules(paragraph):
    assert reason_for(paragraph, lang="de") == "languages"
    assert reason_for(paragraph, lang="en", score=0.4) == "min_language_score"
    assert reason_for(paragraph, lang="en-GB", score=0.9) is None
    assert reason_for(paragraph, lang=None, score=None) is None  # unknown language passes
    assert reason_for(paragraph, CleanConfig(languages=[]), lang="de") is None
    assert reason_for(paragraph, CleanConfig(languages=["de", "en"]), lang="deu") is None


def test_gopher_quality_rules(paragraph):
    snippet = sample_snippets()[0]["text"]  # "He's Justin❤"
    assert compute_signals(snippet)["word_count"] == 2
    assert reason_for(snippet) == "min_words"
    assert compute_signals("-- * -- ... ok")["word_count"] == 1  # bare punctuation is no word
    assert reason_for(paragraph, CleanConfig(max_words=100)) == "max_words"
    spelled_out = " ".join(c for c in paragraph if not c.isspace())  # "R o b e r t ..."
    assert reason_for(spelled_out) == "min_mean_word_length"
    glued = " ".join(paragraph.replace(" ", "").split(".")[:60])  # run-together sentences
    assert compute_signals(glued)["mean_word_length"] > 10
    assert reason_for(glued, CleanConfig(min_words=5)) == "max_mean_word_length"
    words = paragraph.split()
    hashtags = " ".join(f"#{w}" if i % 3 == 0 else w for i, w in enumerate(words))
    assert reason_for(hashtags) == "max_symbol_word_ratio"
    assert compute_signals("one two three four\u2026")["symbol_word_ratio"] == 0.25
    sentences = [s.strip() + "." for s in paragraph.split(".") if s.strip()]
    bullets = "\n".join(f"\u2022 {s}" for s in sentences)
    assert compute_signals(bullets)["bullet_line_ratio"] == 1
    assert reason_for(bullets) == "max_bullet_line_ratio"
    teasers = "\n".join(s[:-1] + "..." for s in sentences)
    assert reason_for(teasers, CleanConfig(max_symbol_word_ratio=None)) == "max_ellipsis_line_ratio"
    table = "Results by year:\n" + "\n".join(
        f"{year} {year % 97} {year * 3 % 1000} 1.{year % 10}." for year in range(1950, 1990)
    )
    assert compute_signals(table)["alpha_word_ratio"] < 0.1
    assert reason_for(table) == "min_alpha_word_ratio"
    no_stop_words = " ".join(w for w in words if w.lower().strip(",.") not in ("the", "and", "of"))
    assert reason_for(no_stop_words) == "min_stop_words"
    assert reason_for(no_stop_words, lang="fr", score=None, cfg=CleanConfig(languages=[])) is None


def test_gopher_repetition_rules(paragraph):
    sentences = [s.strip() + "." for s in paragraph.split(".") if s.strip()]
    menu = ["Home page of the site", "News from the region", "Contact us by mail"]
    page = "\n".join(sentences[:4] + menu + sentences[4:6] + menu + sentences[6:7] + menu)
    assert compute_signals(page)["duplicate_line_fraction"] == pytest.approx(6 / 16, abs=1e-4)
    assert reason_for(page) == "max_duplicate_line_fraction"
    assert reason_for("\n".join(sentences)) is None
    twice = paragraph + "\n\n" + sentences[0] + "\n\n" + paragraph
    assert reason_for(twice) == "max_duplicate_line_fraction"  # 1 of 3 lines, tried first
    counts_off = CleanConfig(
        max_duplicate_line_fraction=None,
        max_duplicate_paragraph_fraction=None,
        max_duplicate_line_char_fraction=None,
    )
    assert reason_for(twice, counts_off) == "max_duplicate_paragraph_char_fraction"
    chant = paragraph + " " + " ".join(["we will rock you"] * 12)
    assert reason_for(chant) == "max_top_4gram_char_fraction"
    copied = paragraph + " " + paragraph[:400]  # one long passage said twice in a line
    assert compute_signals(copied)["duplicate_5gram_char_fraction"] > 0.15
    assert reason_for(copied) == "max_duplicate_5gram_char_fraction"


def test_c4_and_fineweb_rules(paragraph):
    assert reason_for(paragraph + " Lorem ipsum dolor sit amet.") == "c4_drop_lorem_ipsum"
    assert reason_for(paragraph + " function() { return 1; }") == "c4_drop_curly_bracket"
    assert reason_for(paragraph, CleanConfig(c4_drop_curly_bracket=False)) is None
    three = ". ".join(paragraph.split(". ")[:3]) + "."
    assert compute_signals(three)["sentence_count"] == 3
    assert reason_for(three, CleanConfig(min_words=10)) == "c4_min_sentences"
    words = paragraph.split()
    wrapped = "\n".join(" ".join(words[i : i + 9]) for i in range(0, len(words), 9))
    assert compute_signals(wrapped)["line_punct_ratio"] < 0.12
    assert reason_for(wrapped) == "fineweb_min_line_punct_ratio"
    short = "\n".join(" ".join(words[i : i + 3]) + "." for i in range(0, len(words), 3))
    assert reason_for(short, CleanConfig(max_duplicate_line_fraction=None)) == (
        "fineweb_max_short_line_ratio"
    )
    sentences = [s.strip() + "." for s in paragraph.split(".") if s.strip()]
    repeated = "\n".join(sentences + [max(sentences, key=len)])  # one line said twice
    assert compute_signals(repeated)["duplicate_line_char_ratio"] > 0.1
    assert reason_for(repeated) == "max_duplicate_7gram_char_fraction"  # Gopher sees it first
    no_ngram_rules = CleanConfig(max_duplicate_ngram_char_fraction={})
    assert reason_for(repeated, no_ngram_rules) == "fineweb_max_duplicate_line_char_ratio"
    listing = "\n".join(" ".join(words[i : i + 3]) + "." for i in range(0, len(words), 3))
    assert compute_signals(listing)["newline_word_ratio"] > 0.3
    only_list_rule = CleanConfig(
        fineweb_max_short_line_ratio=None, max_duplicate_line_fraction=None
    )
    assert reason_for(listing, only_list_rule) == "fineweb_max_newline_word_ratio"


def test_first_failing_rule_names_the_reason_and_thresholds_are_inclusive(paragraph):
    words = paragraph.split()[:50]
    exactly_fifty = " ".join(words)
    assert compute_signals(exactly_fifty)["word_count"] == 50
    cfg = CleanConfig(c4_min_sentences=None, fineweb_min_line_punct_ratio=None)
    assert reason_for(exactly_fifty, cfg) is None
    assert reason_for(exactly_fifty, cfg.model_copy(update={"min_words": 51})) == "min_words"
    assert reason_for("a b c") == "min_words"  # too short AND spelled out: the first rule wins
    assert reason_for(exactly_fifty, cfg.model_copy(update={"min_words": None})) is None


# --------------------------------------------------------------------------------- the stage


def real_mix() -> list[dict]:
    articles = sample_articles(30)
    snippets = sample_snippets()[:40]
    docs = [
        doc(a["text"], i, "wikitext2", lang="en", lang_score=0.99) for i, a in enumerate(articles)
    ]
    docs += [doc(s["text"], 100 + i, "ftfy") for i, s in enumerate(snippets)]
    docs.append(doc("\x00\x01 \ufeff \n\n", 999, "ftfy"))  # nothing left once normalized
    docs.append(doc(articles[0]["text"], 1000, "other", lang="fr", lang_score=0.9))
    return docs


def test_run_clean_on_real_documents(tmp_path):
    docs = real_mix()
    write_input(docs, tmp_path / "in", max_docs=25)

    manifest = run_clean(tmp_path / "in", tmp_path / "out", CleanConfig(max_docs_per_shard=10))
    counts = manifest["counts"]
    assert counts["input"] == len(docs) == 72
    assert counts["kept"] + counts["rejected"] == counts["input"]
    by_rule = counts["rejected_by_rule"]
    assert by_rule["empty_text"] == 1 and by_rule["languages"] == 1
    # Every snippet goes: most are too short, some have no line of 3 words, one is a
    # Portuguese giveaway post without English stop words (its language is not known here).
    assert by_rule["min_words"] + by_rule["c4_line_edits"] + by_rule["min_stop_words"] == 40
    assert sum(by_rule.values()) == counts["rejected"]
    kept = list(iter_documents(tmp_path / "out"))
    assert len(kept) == counts["kept"] == 29
    assert by_rule["max_duplicate_5gram_char_fraction"] == 1  # "Robert Boulter", see above
    assert [d["id"] for d in kept] == [d["id"] for d in docs[1:30]]  # in order, 10 a file
    assert len(list((tmp_path / "out").glob("part-*.parquet"))) == 4  # 25+5 -> 10+10+5, 5
    signals = json.loads(kept[0]["meta"])["signals"]
    assert signals == compute_signals(kept[0]["text"]) and set(signals) == set(SIGNAL_NAMES)
    assert json.loads(kept[0]["meta"])["lang_score"] == 0.99  # the rest of meta stays

    entries = read_quarantine(tmp_path / "out")
    assert len(entries) == counts["rejected"]
    short = next(e for e in entries if e["reason"] == "min_words")
    assert short["detail"].startswith("word_count=") and short["detail"].endswith(
        " is below min_words=50"
    )
    french = next(e for e in entries if e["reason"] == "languages")
    assert french["detail"] == "lang=fr is not in languages=[en]"
    example = manifest["examples_rejected"]["min_words"][0]
    assert set(example) == {"id", "text", "signal"} and example["signal"] < 50
    rules = {r["name"]: r for r in manifest["rules"]}
    assert rules["min_words"]["keep_if"] == ">= 50" and rules["languages"]["keep_if"] == "in en"
    assert rules["min_words"]["removed"] == by_rule["min_words"]
    assert all(r["failing"] >= r["removed"] for r in manifest["rules"])
    assert manifest["edits"]["unicode_repaired_docs"] > 10

    table = pq.read_table(tmp_path / "out" / SIGNALS_FILE)
    assert table.num_rows == len(docs)
    assert table.column("kept").to_pylist().count(True) == counts["kept"]
    assert table.column("lang").to_pylist()[:2] == ["en", "en"]


def test_output_is_the_same_for_any_number_of_workers(tmp_path):
    docs = real_mix()
    write_input(docs, tmp_path / "in", max_docs=20)  # 4 shards, 4 units
    serial = run_clean(tmp_path / "in", tmp_path / "one", CleanConfig())
    with ProcessExecutor(2) as executor:
        parallel = run_clean(tmp_path / "in", tmp_path / "two", CleanConfig(), executor)
    serial.pop("phases"), parallel.pop("phases")
    assert parallel == serial
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "two").iterdir())
    assert "part-00001-00000.parquet" in files and "part-00003-00000.parquet" not in files
    for name in files:
        if name.endswith(".parquet"):
            assert pq.read_table(tmp_path / "one" / name) == pq.read_table(tmp_path / "two" / name)
    assert read_quarantine(tmp_path / "one") == read_quarantine(tmp_path / "two")


def test_rule_effects_match_a_real_rerun(tmp_path):
    articles = sample_articles(30)
    docs = [doc(a["text"], i, lang="en", lang_score=0.5 + i / 60) for i, a in enumerate(articles)]
    docs += [doc(s["text"], 100 + i) for i, s in enumerate(sample_snippets())]
    write_input(docs, tmp_path / "in", max_docs=50)
    run_clean(tmp_path / "in", tmp_path / "default", CleanConfig())

    stricter = CleanConfig(
        min_words=1500,
        max_duplicate_line_fraction=0.01,
        min_alpha_word_ratio=0.9,
        min_language_score=0.8,
        max_top_ngram_char_fraction={2: 0.02},
    )
    predicted = rule_effects(tmp_path / "default", stricter)
    rerun = run_clean(tmp_path / "in", tmp_path / "stricter", stricter)
    assert predicted == rerun["counts"]
    assert predicted["rejected"] > rule_effects(tmp_path / "default", CleanConfig())["rejected"]
    assert predicted["rejected_by_rule"]["min_language_score"] > 0
    looser = CleanConfig(languages=[], min_words=None, c4_min_sentences=None)
    assert (
        rule_effects(tmp_path / "default", looser)
        == run_clean(tmp_path / "in", tmp_path / "looser", looser)["counts"]
    )


def test_empty_input(tmp_path):
    (tmp_path / "in").mkdir()
    manifest = run_clean(tmp_path / "in", tmp_path / "out", CleanConfig())
    assert manifest["counts"] == {"input": 0, "kept": 0, "rejected": 0, "rejected_by_rule": {}}
    assert rule_effects(tmp_path / "out", CleanConfig())["input"] == 0


def test_ngram_sizes_are_validated():
    with pytest.raises(ValueError, match="n must be in 2..4"):
        CleanConfig(max_top_ngram_char_fraction={5: 0.1})
    with pytest.raises(ValueError, match="n must be in 5..10"):
        CleanConfig(max_duplicate_ngram_char_fraction={4: 0.1})
