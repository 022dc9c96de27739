"""Rebuild the bundled sample corpus from the shared raw data, so its provenance is reproducible.

In: /work/shared/data (or the folder given as the first argument), which holds the original
files listed in data/sample/README.md. Out, next to this script:

- wikitext2_test_articles.jsonl.gz  WikiText-2 raw test split, one JSON line per article
                                    (id, title, text), lightly detokenized.
- botchan.txt                       Botchan, Project Gutenberg header/footer removed, one
                                    blank-line-separated block per chapter.
- squad_contexts.csv                SQuAD 2.0 dev subset, one row per question
                                    (id, title, question, context).
- ftfy_text_snippets.jsonl          ftfy's test cases: short real-world strings, many with
                                    mojibake (set, label, text); most are too short for the
                                    clean stage, which shows its rules at work.
- hellaswag_val_sample.jsonl        40 HellaSwag validation questions in the generic
                                    multiple-choice format (id, context, choices, label), the
                                    context built as lm-evaluation-harness builds HellaSwag's.

and in finetune/, the fine-tuning and application-evaluation samples (see finetune_samples):
- squad_v2_sample.json              SQuAD 2.0 dev paragraphs of at most 100 words, official
                                    JSON format, unanswerable questions included.
- sst2_sample.jsonl                 3000 SST-2 train phrases of 4-20 words, 1500 per label
                                    (text, label); sst2_dev_sample.jsonl: the whole SST-2 dev.
- xsum_sample.jsonl                 150 XSum test (document, summary) pairs, documents of at
                                    most 250 words.
- flores_en_de_sample.jsonl         300 FLORES-200 dev sentences, English and German (id, en, de).

Usage: python data/sample/make_sample.py [SHARED_DATA_DIR]
The outputs are byte-for-byte deterministic (the gzip header carries no name or time).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SHARED = Path("/work/shared/data")
sys.path.insert(0, str(HERE.parent.parent))  # the repository, for the rules shared with pipeline/

from pipeline.evaluate.tasks import hellaswag_context, hellaswag_preprocess  # noqa: E402
from pipeline.wikitext import (  # noqa: E402
    ARTICLE_HEADING,
    LOWERCASE_FIRST_WORD,
    detokenize_wikitext,
)

# ------------------------------------------------------------------------------ WikiText-2

# The WikiText detokenizer and heading rules live in pipeline/wikitext.py (the
# same rules lm-evaluation-harness applies before scoring perplexity on whole articles).


def wikitext_articles(raw_path: Path) -> list[dict[str, str]]:
    """Split the raw test file at its top-level headings into {id, title, text} articles."""
    lines = gzip.decompress(raw_path.read_bytes()).decode("utf-8").replace("\r\n", "\n")
    articles: list[dict[str, str]] = []
    title, body = None, []

    def close() -> None:
        if title is not None:
            text = detokenize_wikitext("\n\n".join(body) + "\n").strip()
            articles.append({"title": detokenize_wikitext(title).strip(), "text": text})

    for line in lines.split("\n"):
        heading = ARTICLE_HEADING.match(line)
        if heading and not LOWERCASE_FIRST_WORD.match(heading.group(1)):
            close()
            title, body = heading.group(1), []
        elif line.strip():
            body.append(line)
    close()
    for number, article in enumerate(articles):
        article["id"] = f"wikitext2-test-{number:03d}"
    return [{"id": a["id"], "title": a["title"], "text": a["text"]} for a in articles]


def write_jsonl_gz(records: list[dict[str, str]], path: Path) -> None:
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    buffer = io.BytesIO()
    # mtime=0 and no file name in the header: the same input gives the same bytes.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as gz:
        gz.write(payload)
    path.write_bytes(buffer.getvalue())


# ---------------------------------------------------------------------------------- Botchan

GUTENBERG_START = "*** START OF THIS PROJECT GUTENBERG EBOOK"
GUTENBERG_END = "End of Project Gutenberg's"
CHAPTER = re.compile(r"^CHAPTER [IVXL]+\.?$")


def botchan_chapters(raw_path: Path) -> list[str]:
    """The novel without the Gutenberg header, license and transcriber's typo list, cut into
    the translator's note and one block per chapter (its lines kept as wrapped)."""
    lines = raw_path.read_text(encoding="utf-8-sig").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(GUTENBERG_START))
    end = next(i for i, line in enumerate(lines) if line.startswith(GUTENBERG_END))
    # Skip the "Produced by ..." credit line right after the START marker.
    body = [line.rstrip() for line in lines[start + 2 : end]]
    # The transcriber's notes ("[A: Insitent]" ...) follow the end of the story.
    the_end = next(i for i, line in enumerate(body) if line.strip() == "--(THE END)--")
    body = body[: the_end + 1]
    blocks: list[list[str]] = [[]]
    for line in body:
        if CHAPTER.match(line.strip()):
            blocks.append([])
        if line.strip():
            blocks[-1].append(line)
    return ["\n".join(block) for block in blocks if block]


# ------------------------------------------------------------------------------------ SQuAD


def squad_rows(raw_path: Path) -> list[dict[str, str]]:
    """One row per question; a paragraph's context repeats for each of its questions."""
    data = json.loads(raw_path.read_text(encoding="utf-8"))
    rows = []
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                rows.append(
                    {
                        "id": qa["id"],
                        "title": article["title"],
                        "question": qa["question"],
                        "context": paragraph["context"],
                    }
                )
    return rows


def write_csv(rows: list[dict[str, str]], path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


# ------------------------------------------------------------------------------------- ftfy


def ftfy_snippets(raw_path: Path) -> list[dict[str, str]]:
    """The test strings as they were found (`original`), without ftfy's expected fixes."""
    rows = []
    for line in raw_path.read_text(encoding="utf-8").splitlines():
        case = json.loads(line)
        rows.append({"set": case["set"], "label": case["label"], "text": case["original"]})
    return rows


# -------------------------------------------------------------------------------- HellaSwag

HELLASWAG_SAMPLE_SIZE = 40


def hellaswag_sample(raw_path: Path) -> list[dict]:
    """The last questions of the shared HellaSwag validation file (the quickstart's `hellaswag`
    task scores the first ones), as generic multiple-choice records."""
    rows = [json.loads(line) for line in gzip.decompress(raw_path.read_bytes()).splitlines()]
    return [
        {
            "id": f"hellaswag-val-{row['ind']}",
            "context": hellaswag_context(row),
            "choices": [hellaswag_preprocess(ending) for ending in row["endings"]],
            "label": int(row["label"]),
        }
        for row in rows[-HELLASWAG_SAMPLE_SIZE:]
    ]


# ------------------------------------------------------------------------------- fine-tuning

SQUAD_MAX_CONTEXT_WORDS = 100  # short paragraphs: prompts fit a 256-token quickstart model
SST2_PER_LABEL = 1500
# Shorter phrases ("kids , spirit") carry little sentiment; longer ones only add bytes.
SST2_MIN_WORDS, SST2_MAX_WORDS = 4, 20
XSUM_SIZE, XSUM_MAX_WORDS = 150, 250
FLORES_SIZE = 300


def squad_short_paragraphs(raw_path: Path) -> dict:
    """The SQuAD 2.0 file with only its paragraphs of at most SQUAD_MAX_CONTEXT_WORDS words,
    each whole (all its questions, answerable or not), in the official format."""
    data = json.loads(raw_path.read_text(encoding="utf-8"))
    articles = []
    for article in data["data"]:
        paragraphs = [
            p for p in article["paragraphs"] if len(p["context"].split()) <= SQUAD_MAX_CONTEXT_WORDS
        ]
        if paragraphs:
            articles.append({"title": article["title"], "paragraphs": paragraphs})
    return {"version": data["version"], "data": articles}


def _gz_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]


def sst2_phrases(raw_path: Path) -> list[dict]:
    """The first SST2_PER_LABEL distinct phrases of each label with 4 to 20 words, in file
    order."""
    kept, seen, per_label = [], set(), {0: 0, 1: 0}
    for row in _gz_records(raw_path):
        text, label = row["sentence"].strip(), int(row["label"])
        if not SST2_MIN_WORDS <= len(text.split()) <= SST2_MAX_WORDS or text in seen:
            continue
        if per_label[label] < SST2_PER_LABEL:
            seen.add(text)
            per_label[label] += 1
            kept.append({"text": text, "label": label})
    return kept


def finetune_samples(shared: Path, out: Path) -> dict[str, int]:
    """Write the fine-tuning samples into `out`; returns the record count per file."""
    out.mkdir(parents=True, exist_ok=True)
    counts = {}

    def write_jsonl(name: str, records: list[dict]) -> None:
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        (out / name).write_text(lines, encoding="utf-8")
        counts[name] = len(records)

    squad = squad_short_paragraphs(shared / "eval/squad/squad_v2_dev_subset_shared.json")
    (out / "squad_v2_sample.json").write_text(
        json.dumps(squad, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    counts["squad_v2_sample.json"] = sum(
        len(p["qas"]) for a in squad["data"] for p in a["paragraphs"]
    )
    write_jsonl(
        "sst2_sample.jsonl",
        sst2_phrases(shared / "eval/sst2/sst2_glue_train_phrases_shared.jsonl.gz"),
    )
    dev = [
        json.loads(line)
        for line in (shared / "eval/sst2/sst2_glue_dev_shared.jsonl")
        .read_text(encoding="utf-8")
        .splitlines()
    ]
    write_jsonl(
        "sst2_dev_sample.jsonl", [{"text": r["sentence"], "label": int(r["label"])} for r in dev]
    )
    xsum = [
        {"id": r["id"], "document": r["document"], "summary": r["summary"]}
        for r in _gz_records(shared / "summarization/xsum_test_shared.jsonl.gz")
        if len(r["document"].split()) <= XSUM_MAX_WORDS
    ]
    write_jsonl("xsum_sample.jsonl", xsum[:XSUM_SIZE])
    flores = _gz_records(shared / "translation/flores200/flores200_dev_24lang.jsonl.gz")
    write_jsonl(
        "flores_en_de_sample.jsonl",
        [{"id": r["id"], "en": r["eng_Latn"], "de": r["deu_Latn"]} for r in flores[:FLORES_SIZE]],
    )
    return counts


def xsum_news_articles(raw_path: Path) -> list[dict[str, str]]:
    """The XSum test articles that finetune/xsum_sample.jsonl does not hold (so the
    summarization task is never scored on text the quickstart model was pretrained on), in
    file order: {id, text}. Modern news prose, a sentence a line."""
    records = _gz_records(raw_path)
    short = [r["id"] for r in records if len(r["document"].split()) <= XSUM_MAX_WORDS]
    held_out = set(short[:XSUM_SIZE])  # the documents of finetune/xsum_sample.jsonl
    return [
        {"id": f"xsum-{r['id']}", "text": r["document"].strip()}
        for r in records
        if r["id"] not in held_out and r["document"].strip()
    ]


def main(shared: Path = DEFAULT_SHARED) -> None:
    articles = wikitext_articles(shared / "lm/wikitext-2-raw/wiki.test.raw.gz")
    write_jsonl_gz(articles, HERE / "wikitext2_test_articles.jsonl.gz")
    chapters = botchan_chapters(shared / "lm/botchan.txt")
    (HERE / "botchan.txt").write_text("\n\n".join(chapters) + "\n", encoding="utf-8")
    news = xsum_news_articles(shared / "summarization/xsum_test_shared.jsonl.gz")
    write_jsonl_gz(news, HERE / "xsum_news_articles.jsonl.gz")
    rows = squad_rows(shared / "eval/squad/squad_v2_dev_subset_shared.json")
    write_csv(rows, HERE / "squad_contexts.csv")
    snippets = ftfy_snippets(shared / "unicode/ftfy_mojibake_cases_shared.jsonl")
    (HERE / "ftfy_text_snippets.jsonl").write_text(
        # ASCII-escaped: several snippets hold U+0085 or U+2028, which str.splitlines() and
        # some editors take for line breaks.
        "".join(json.dumps(r) + "\n" for r in snippets),
        encoding="ascii",
    )
    questions = hellaswag_sample(shared / "eval/hellaswag/hellaswag_val_shared.jsonl.gz")
    (HERE / "hellaswag_val_sample.jsonl").write_text(
        "".join(json.dumps(q) + "\n" for q in questions), encoding="ascii"
    )
    print(
        f"wrote {len(questions)} HellaSwag questions, "
        f"{len(articles)} WikiText articles, {len(news)} XSum news articles, "
        f"{len(chapters)} Botchan blocks, "
        f"{len(rows)} SQuAD rows ({len({r['context'] for r in rows})} distinct contexts), "
        f"{len(snippets)} ftfy snippets"
    )
    counts = finetune_samples(shared, HERE / "finetune")
    print("finetune/: " + ", ".join(f"{name} {n}" for name, n in counts.items()))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SHARED)
