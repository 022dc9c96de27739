"""Main-text extraction quality and speed: the pipeline's extractors against trafilatura and
resiliparse called directly, on real pages with human ground truth.

- 126 article pages (scrapinghub article-extraction-benchmark): word precision / recall / F1
  against the human `articleBody` (bag of lowercase \\w+ tokens, averaged per page), next to the
  benchmark's shipped trafilatura output; pages per second, single process, extract calls only
  (pages already in memory), best of `--repeats` interleaved rounds.
- 90 multilingual pages (trafilatura's evaluation set): share of must-contain snippets found and
  of must-not-contain snippets absent.

The pipeline's cases run `HtmlExtractor.extract` on the page bytes, so they also decode the bytes
and read title/author/date/canonical URL from the page; the direct calls get decoded strings.

Run: .venv/bin/python bench/ingest_extraction.py [--repeats 3]
Writes bench/results/ingest_extraction.md.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from ingest_common import (
    article_pages,
    eval_pages,
    need_shared,
    snippet_score,
    table,
    word_prf,
    write_results,
)

from pipeline.config import ExtractionConfig
from pipeline.ingest.html import ExtractionFailed, HtmlExtractor, decode_html


def direct_cases() -> dict[str, Callable[[bytes], str]]:
    import trafilatura
    from resiliparse.extract.html2text import extract_plain_text

    def text(data: bytes) -> str:
        return decode_html(data)[0]

    return {
        "trafilatura defaults": lambda h: trafilatura.extract(text(h)) or "",
        "trafilatura favor_precision": lambda h: (
            trafilatura.extract(text(h), favor_precision=True) or ""
        ),
        "resiliparse main_content defaults": lambda h: extract_plain_text(
            text(h), main_content=True
        ),
    }


def pipeline_case(extractor: str, counter: dict) -> Callable[[bytes], str]:
    engine = HtmlExtractor(ExtractionConfig(extractor=extractor, timeout_seconds=60))

    def run(data: bytes) -> str:
        try:
            page = engine.extract(data)
        except ExtractionFailed:
            return ""
        counter[page.extractor] = counter.get(page.extractor, 0) + 1
        return page.text

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    need_shared()
    articles, evals = article_pages(), eval_pages()
    used: dict[str, dict] = {
        name: {} for name in ("fast-with-fallback", "resiliparse", "trafilatura")
    }
    cases = direct_cases()
    cases["pipeline: resiliparse fast path"] = pipeline_case("resiliparse", used["resiliparse"])
    cases["pipeline: fast-with-fallback (default)"] = pipeline_case(
        "fast-with-fallback", used["fast-with-fallback"]
    )
    cases["pipeline: trafilatura"] = pipeline_case("trafilatura", used["trafilatura"])

    for fn in cases.values():  # warm-up: imports, lazy tables
        fn(articles[0]["html"])
    seconds: dict[str, float] = {}
    outputs: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            for counter in used.values():
                counter.clear()
            started = time.perf_counter()
            outs = [fn(page["html"]) for page in articles]
            elapsed = time.perf_counter() - started
            seconds[name] = min(seconds.get(name, elapsed), elapsed)
            outputs[name] = outs
            if name.startswith("pipeline: fast"):
                fallback_articles = dict(used["fast-with-fallback"])

    rows = []
    reference = len(articles) / seconds["trafilatura favor_precision"]
    for name, fn in cases.items():
        scores = [
            word_prf(o, p["articleBody"]) for o, p in zip(outputs[name], articles, strict=True)
        ]
        p, r, f = (sum(s[i] for s in scores) / len(scores) for i in range(3))
        for counter in used.values():
            counter.clear()
        snip = [snippet_score(fn(page["html"]), page) for page in evals]
        found, of_with = sum(s[0] for s in snip), sum(s[1] for s in snip)
        absent, of_without = sum(s[2] for s in snip), sum(s[3] for s in snip)
        speed = len(articles) / seconds[name]
        rows.append(
            (
                name,
                round(p, 3),
                round(r, 3),
                round(f, 3),
                round(speed, 1),
                round(speed / reference, 2),
                f"{found / of_with:.3f}",
                f"{absent / of_without:.3f}",
                f"{(found + absent) / (of_with + of_without):.3f}",
            )
        )
        if name.startswith("pipeline: fast"):
            fallback_evals = dict(used["fast-with-fallback"])
    baseline = [word_prf(p["baseline_trafilatura"], p["articleBody"]) for p in articles]
    rows.append(
        ("shipped baseline_trafilatura (F1 only)",)
        + tuple(round(sum(s[i] for s in baseline) / len(baseline), 3) for i in range(3))
        + ("n/a", "n/a", "n/a", "n/a", "n/a")
    )
    header = (
        "extractor",
        "precision",
        "recall",
        "F1",
        "pages/s",
        "speed vs trafilatura favor_precision",
        "snippets found",
        "boilerplate absent",
        "snippets all",
    )
    body = (
        f"126 article pages (word P/R/F1 vs human ground truth; pages/s single process, best of "
        f"{args.repeats} interleaved rounds) and 90 multilingual pages (snippet pass rates).\n\n"
        f"Command: `.venv/bin/python bench/ingest_extraction.py --repeats {args.repeats}`\n\n"
        + table(rows, header)
        + "\n\nfast-with-fallback sent "
        f"{fallback_articles.get('trafilatura', 0)} of {len(articles)} article pages and "
        f"{fallback_evals.get('trafilatura', 0)} of {len(evals)} multilingual pages to "
        "trafilatura.\n\nGoal of issue 3: F1 >= 0.95 at >= 4x trafilatura's speed."
    )
    write_results("ingest_extraction", "Main-text extraction: quality and speed", body)


if __name__ == "__main__":
    main()
