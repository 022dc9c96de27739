"""Tokenizer training time, peak memory and compression on the shared news corpus.

For vocabularies of 8k, 16k and 32k, each job in a fresh process (so its peak RSS is its own):
- `pipeline`: the tokenizer stage's `train_tokenizer`: streams the train documents out of
  Parquet, trains byte-level BPE with the digit-splitting GPT-4-style pre-tokenizer, saves it,
  and measures it on the held-out val documents (10%, by id hash; never trained on);
- `gpt2-regex`: the same stage with GPT-2's byte-level pre-tokenizer (numbers kept whole), the
  reference for what splitting digits costs in compression;
- `library`: `tokenizers` alone (`train_from_iterator` on the train texts already in memory, GPT-2
  pre-tokenizer), the reference for the stage's own overhead.
Compression is bytes per token on the held-out documents (more is better), with words per token
and the share of the vocabulary the held-out text uses.

Run: .venv/bin/python bench/tokenizer_train.py [--vocabs 8192 16384 32768]
Writes bench/results/tokenizer_train.md.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tokenizer_corpus import machine, news_documents, table, write_results
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pipeline.config import ShardsConfig, TokenizerConfig
from pipeline.documents import iter_batches
from pipeline.tokenizer.splits import DocumentSplit
from pipeline.tokenizer.train_bpe import fit_tokenizer, train_bpe


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def gpt2_recipe(texts: Any, cfg: TokenizerConfig, length: int) -> Tokenizer:
    """Byte-level BPE with GPT-2's own pre-tokenizer regex (digits grouped)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(cfg.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=length)
    return tokenizer


def job(variant: str, vocab: int, docs_dir: str, out_dir: str) -> dict[str, Any]:
    """One training run in this (fresh) process: seconds, CPU seconds, memory, measures."""
    cfg = TokenizerConfig(vocab_size=vocab)
    held_out = DocumentSplit.for_documents(Path(docs_dir), ShardsConfig())
    texts: list[str] = []
    if variant == "library":  # the texts in memory first, outside the timed part
        for batch in iter_batches(Path(docs_dir), columns=["id", "text"]):
            ids, column = batch.column(0).to_pylist(), batch.column(1).to_pylist()
            texts += [
                t for i, t in zip(ids, column, strict=True) if held_out.split_of(i) == "train"
            ]
    baseline = rss_mb()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    if variant == "library":
        batches = (texts[i : i + 1000] for i in range(0, len(texts), 1000))
        gpt2_recipe(batches, cfg, len(texts))
        manifest: dict[str, Any] = {"stats": {}}
    else:
        recipe = train_bpe if variant == "pipeline" else gpt2_recipe
        manifest = fit_tokenizer(recipe, Path(docs_dir), Path(out_dir), cfg, held_out)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    peak = after.ru_maxrss / 1024  # KiB on Linux
    return {
        "seconds": seconds,
        "cpu": cpu,
        "peak_mb": peak,
        "growth_mb": peak - baseline,
        **manifest["stats"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocabs", type=int, nargs="+", default=[8192, 16384, 32768])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-tokenizer-train-"))
    try:
        run(work, args.vocabs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, vocabs: list[int]) -> None:
    docs_dir = work / "docs"
    pairs = news_documents(docs_dir)
    megabytes = sum(len(text.encode("utf-8")) for _, text in pairs) / 1e6
    held_out = DocumentSplit.for_documents(docs_dir, ShardsConfig())
    val = sum(held_out.split_of(doc_id) == "val" for doc_id, _ in pairs)

    results: dict[tuple[str, int], dict[str, Any]] = {}
    for vocab in vocabs:
        for variant in ("pipeline", "gpt2-regex", "library"):
            out = work / f"{variant}-{vocab}"
            # a fresh process per job: its peak RSS is the job's own
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                results[variant, vocab] = pool.submit(
                    job, variant, vocab, str(docs_dir), str(out)
                ).result()
            print(variant, vocab, f"{results[variant, vocab]['seconds']:.1f} s", flush=True)

    rows = []
    for (variant, vocab), r in results.items():
        rows.append(
            [
                f"{vocab:,}",
                variant,
                r["seconds"],
                r["cpu"],
                f"{r['peak_mb']:.0f}",
                f"{r['growth_mb']:.0f}",
                r.get("heldout_bytes_per_token", ""),
                r.get("heldout_words_per_token", ""),
                r.get("heldout_vocab_used_fraction", ""),
            ]
        )
    ratios = []
    for vocab in vocabs:
        ours, gpt2, lib = (results[v, vocab] for v in ("pipeline", "gpt2-regex", "library"))
        ratios.append(
            [
                f"{vocab:,}",
                ours["heldout_bytes_per_token"] / gpt2["heldout_bytes_per_token"],
                ours["seconds"] / lib["seconds"],
                ours["cpu"] / lib["cpu"],
                ours["growth_mb"] / max(lib["growth_mb"], 1),
            ]
        )
    report = "\n\n".join(
        [
            "# Tokenizer training: time, peak memory, held-out compression",
            f"Machine: {machine()}. Corpus: shared news (BBC + AG News), {len(pairs):,} "
            f"documents, {megabytes:.2f} MB UTF-8; {val:,} held out (val by id hash, 10%), "
            "the rest trained on. Each job in a fresh process.",
            "Command: `.venv/bin/python bench/tokenizer_train.py`",
            table(
                [
                    "vocab",
                    "variant",
                    "wall s",
                    "CPU s",
                    "peak RSS MB",
                    "RSS growth MB",
                    "held-out bytes/token",
                    "words/token",
                    "vocab used",
                ],
                rows,
            ),
            table(
                [
                    "vocab",
                    "bytes/token: pipeline / gpt2-regex",
                    "train wall: pipeline / library",
                    "train CPU: pipeline / library",
                    "RSS growth: pipeline / library",
                ],
                ratios,
            ),
            "The pipeline's time includes reading Parquet, the id split, saving, and encoding "
            "the held-out documents for the measures; the library's covers training alone.",
        ]
    )
    print(report)
    print(f"\nwrote {write_results('tokenizer_train', report + chr(10))}")


if __name__ == "__main__":
    main()
