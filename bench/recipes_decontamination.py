"""Decontamination against datatrove's n-gram decontamination, side by side, one process.

Corpus: the real news of ../shared/data (BBC, AG News test and train sample, CNN/DailyMail:
16,340 articles), into which real evaluation examples are planted: `--planted` verbatim copies
and as many lightly edited ones (case changed, punctuation changed, one word replaced), each
into its own article at a paragraph break. Evaluation sets: HellaSwag, LAMBADA, SQuAD 2.0
(held-out part), XSum (held-out part), WikiText-2 test: what a config's evaluate.tasks names.

Both sides use 13-grams of the same example texts (datatrove: label n-grams, no query; its
default normalization and spaCy word tokenizer; ours: lowercase, no punctuation, whitespace
words, short examples matched whole). Measured: the time to build the index and to scan the
corpus, docs/s, recall on the planted copies, and false positives: clean articles flagged.

    .venv/bin/python bench/recipes_decontamination.py [--planted 100]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_common import SHARED, need_shared, table, write_results  # noqa: E402

from pipeline.config import validate_config  # noqa: E402
from pipeline.decontaminate import read_matches, run_decontaminate  # noqa: E402
from pipeline.decontaminate.examples import eval_examples  # noqa: E402
from pipeline.decontaminate.ngrams import normalized_words  # noqa: E402
from pipeline.documents import make_document, write_documents  # noqa: E402
from pipeline.quarantine import Quarantine  # noqa: E402

NEWS = [  # (source name, file, text field)
    ("bbc", "news/bbc_news_fulltext_shared.jsonl.gz", "text"),
    ("agtest", "news/ag_news_test_shared.jsonl.gz", "text"),
    ("agtrain", "news/ag_news_trainsample_shared.jsonl.gz", "text"),
    ("cnn", "summarization/cnn_dailymail_train_sample_shared.jsonl.gz", "article"),
]
TASKS = [
    {"type": "hellaswag", "path": "eval/hellaswag/hellaswag_val_shared.jsonl.gz"},
    {"type": "lambada", "path": "eval/lambada/lambada_openai_test_shared.jsonl.gz"},
    {"type": "qa", "name": "squad", "path": "eval/squad/squad_v2_dev_subset_shared.json"},
    {
        "type": "summarization",
        "name": "xsum",
        "path": "summarization/xsum_test_shared.jsonl.gz",
        "article_field": "document",
    },
    {"type": "wikitext2", "path": "lm/wikitext-2-raw/wiki.test.raw.gz"},
]


def edit(text: str, rng: random.Random) -> str:
    words = text.split()
    if len(words) > 4:
        words[rng.randrange(1, len(words) - 1)] = "zzyzx"
    edited = " ".join(words)
    edited = edited.upper() if rng.random() < 0.5 else edited.lower()
    return edited.replace(",", ";").replace(".", "!").replace("'", "")


def corpus(config, planted: int, seed: int = 7) -> tuple[list[dict], dict[str, tuple]]:
    articles = []
    for source, name, field in NEWS:
        with gzip.open(SHARED / name, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle):
                articles.append((f"{source}-{number}", json.loads(line)[field]))
    with Quarantine(Path(tempfile.mkdtemp())) as scratch:
        examples = [
            e for e in eval_examples(config, scratch) if len(normalized_words(e.text)) >= 13
        ]
    rng = random.Random(seed)
    chosen = rng.sample(examples, 2 * planted)
    targets = rng.sample(range(len(articles)), 2 * planted)
    truth = {}
    for k, (example, target) in enumerate(zip(chosen, targets, strict=True)):
        doc_id, text = articles[target]
        kind = "verbatim" if k < planted else "edited"
        copy = example.text if kind == "verbatim" else edit(example.text, rng)
        paragraphs = text.split("\n")
        at = rng.randrange(0, len(paragraphs) + 1)
        articles[target] = (doc_id, "\n".join([*paragraphs[:at], copy, *paragraphs[at:]]))
        truth[doc_id] = (example, kind)
    docs = [make_document(id=i, text=t, source=i.split("-")[0]) for i, t in articles]
    return docs, truth


def run_ours(docs, config, work: Path) -> dict:
    write_documents(docs, work / "in", 5000)
    started = time.perf_counter()
    body = run_decontaminate(work / "in", work / "out", config, work / "cache")
    total = time.perf_counter() - started
    flagged: dict[str, set] = {}
    for match in read_matches(work / "out"):
        flagged.setdefault(match["id"], set()).add((match["set"], match["example_id"]))
    return {
        "index_s": body["phases"]["seconds"]["index"],
        "scan_s": body["phases"]["seconds"]["match"],
        "total_s": total,
        "flagged": flagged,
    }


def run_datatrove(docs, examples, work: Path) -> dict:
    import numpy as np
    from datatrove.data import Document
    from datatrove.pipeline.decont.n_grams import NGramsDecontConfig, NGramsDecontFilter
    from datatrove.utils.hashing import HashConfig, create_hash_func
    from datatrove.utils.text import ngrams, simplify_text
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    # sha1: with its default xxhash HashConfig, datatrove 0.10's decontamination hashes `str`
    # n-grams with xxhash, which refuses them ("Strings must be encoded before hashing")
    config = NGramsDecontConfig(n_grams=13, hash_config=HashConfig(hash_fc="sha1"))
    tokenizer = load_word_tokenizer("en")
    hash_func = create_hash_func(config.hash_config)
    index = work / "datatrove-index"
    index.mkdir(parents=True)
    started = time.perf_counter()
    # NGramsDecontIndexer.compute_hashes(label) with no query, as written in datatrove (its
    # indexer class insists on lighteval, which reads tasks from the hub; not reachable here)
    by_set: dict[str, set[int]] = {}
    for example in examples:
        tokens = tokenizer.word_tokenize(simplify_text(example.text, config.norm_config))
        hashes = map(hash_func, map(" ".join, ngrams(tokens, config.n_grams)))
        by_set.setdefault(example.set, set()).update(hashes)
    for name, hashes in by_set.items():
        np.array(sorted(hashes), dtype=config.hash_config.np_descr).tofile(
            index / f"{name}.index.hashes"
        )
    index_s = time.perf_counter() - started
    decont = NGramsDecontFilter(str(index), config=config)
    decont.load_index_hashes()
    started = time.perf_counter()
    flagged = {}
    for doc in docs:
        document = Document(text=doc["text"], id=doc["id"])
        if decont.filter(document) is not True:
            flagged[doc["id"]] = {(document.metadata["contaminated_task"], "")}
    return {"index_s": index_s, "scan_s": time.perf_counter() - started, "flagged": flagged}


def recall(flagged: dict, truth: dict, kind: str, exact: bool) -> float:
    hits = [
        doc_id in flagged and (not exact or (example.set, example.example_id) in flagged[doc_id])
        for doc_id, (example, k) in truth.items()
        if k == kind
    ]
    return sum(hits) / len(hits)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--planted", type=int, default=100)
    args = parser.parse_args()
    need_shared()
    config = validate_config(
        {
            "sources": [{"type": "jsonl", "path": "x"}],
            "base_dir": str(SHARED),
            "evaluate": {"tasks": TASKS},
            "decontaminate": {"enabled": True, "action": "report"},
        }
    )
    docs, truth = corpus(config, args.planted)
    with Quarantine(Path(tempfile.mkdtemp())) as scratch:
        examples = list(eval_examples(config, scratch))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        ours = run_ours(docs, config, Path(tmp))
        theirs = run_datatrove(docs, examples, Path(tmp))
    load_after = os.getloadavg()[0]
    rows = []
    for name, result, exact in (
        ("llmpipe decontaminate", ours, True),
        ("datatrove NGramsDecontFilter", theirs, False),
    ):
        false_positives = sorted(set(result["flagged"]) - set(truth))
        rows.append(
            (
                name,
                result["index_s"],
                result["scan_s"],
                len(docs) / result["scan_s"],
                theirs["scan_s"] / result["scan_s"],
                recall(result["flagged"], truth, "verbatim", exact),
                recall(result["flagged"], truth, "edited", exact),
                len(false_positives),
            )
        )
    header = ("implementation", "index build (s)", "scan (s)", "docs/s", "speed-up vs datatrove",
              "recall, verbatim", "recall, edited", "clean articles flagged")  # fmt: skip
    both = set(ours["flagged"]) & set(theirs["flagged"])
    either = set(ours["flagged"]) | set(theirs["flagged"])
    per_set = {}
    for doc_id, (example, kind) in truth.items():
        entry = per_set.setdefault(example.set, {"verbatim": [0, 0], "edited": [0, 0]})
        entry[kind][0] += (example.set, example.example_id) in ours["flagged"].get(doc_id, set())
        entry[kind][1] += 1
    set_rows = [
        (name, f"{v['verbatim'][0]}/{v['verbatim'][1]}", f"{v['edited'][0]}/{v['edited'][1]}")
        for name, v in sorted(per_set.items())
    ]
    only_theirs = sorted(set(theirs["flagged"]) - set(ours["flagged"]))
    only_ours = sorted(set(ours["flagged"]) - set(theirs["flagged"]))
    body = (
        f"Corpus: {len(docs):,} real news articles ({sum(len(d['text']) for d in docs) / 1e6:.1f} MB), "
        f"{args.planted} with a verbatim copy and {args.planted} with an edited copy of a real "
        f"evaluation example ({len(examples):,} examples in HellaSwag, LAMBADA, SQuAD, XSum, "
        f"WikiText-2). 13-grams, one process each, run one after the other. Load average (2 "
        f"cores, shared): {load_before:.1f} before, {load_after:.1f} after.\n\n"
        + table(rows, header)
        + "\n\nRecall of ours counts a planted document only when the very example planted is "
        "among its matches; datatrove's names only a task, so any flag of the document counts.\n\n"
        f"Same findings: {len(both)} documents flagged by both, {len(either)} by either; only "
        f"datatrove: {len(only_theirs)} {only_theirs[:5]}; only ours: {len(only_ours)} "
        f"{only_ours[:5]}.\n\nOur recall per evaluation set (found / planted):\n\n"
        + table(set_rows, ("eval set", "verbatim", "edited"))
    )
    write_results("recipes_decontamination", "Decontamination: llmpipe vs datatrove", body)


if __name__ == "__main__":
    main()
