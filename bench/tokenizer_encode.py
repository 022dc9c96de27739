"""Encode throughput: text into token shards, against the raw encoders, on the shared news corpus.

Trains the pipeline's tokenizer on the news corpus (as the tokenizer stage does), then measures
MB of UTF-8 text per second for:
- `tokenizers` `encode_batch` and `encode_batch_fast` on the texts in memory, taking the ids
  (the reference);
- tiktoken `encode_ordinary_batch` (and `encode_ordinary` on one thread), with an `Encoding`
  built from the trained tokenizer's ranks and pre-tokenizer regex
  (`pipeline.tokenizer.text_encoder.tiktoken_encoding`);
- the shards stage (`write_token_shards`: read Parquet, split by id, encode, count bytes, words
  and vocabulary use, write raw parts, concatenate into shards), with each encoder, in this
  process and on 2 worker processes (pool start-up included).
All on the same machine in one script, each case best of `--repeats` rounds (rounds interleave
the cases, so a noisy neighbour hurts them alike). It also checks that tiktoken's ids equal
`tokenizers`' for every document, and that every shards run wrote the same bytes.

Run: .venv/bin/python bench/tokenizer_encode.py [--vocab 16384] [--repeats 3]
Writes bench/results/tokenizer_encode.md.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tokenizer_corpus import machine, news_documents, table, write_results

from pipeline.config import ShardsConfig, TokenizerConfig
from pipeline.parallel import ProcessExecutor, SerialExecutor
from pipeline.tokenizer.encode import write_token_shards
from pipeline.tokenizer.splits import DocumentSplit
from pipeline.tokenizer.text_encoder import TextEncoder
from pipeline.tokenizer.train_bpe import train_tokenizer

BATCH = 1000  # texts per encode call, as the shards stage reads them


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (worker processes), all threads."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copies", type=int, default=2, help="copies of the corpus to encode")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-tokenizer-encode-"))
    try:
        run(work, args.vocab, args.repeats, args.copies)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, vocab: int, repeats: int, copies: int) -> None:
    docs_dir, tokenizer_dir = work / "docs", work / "tok"
    pairs = news_documents(docs_dir)
    held_out = DocumentSplit.for_documents(docs_dir, ShardsConfig())
    train_tokenizer(docs_dir, tokenizer_dir, TokenizerConfig(vocab_size=vocab), held_out)
    if copies > 1:  # more text, so fixed costs (opening files, starting workers) weigh less
        shutil.rmtree(docs_dir)
        pairs = news_documents(docs_dir, copies)
    texts = [text for _, text in pairs]
    megabytes = sum(len(text.encode("utf-8")) for text in texts) / 1e6

    hf = TextEncoder(tokenizer_dir, "tokenizers")
    tk = TextEncoder(tokenizer_dir, "tiktoken")
    encoding, tokenizer, threads = tk._tiktoken, hf.tokenizer, os.cpu_count() or 1
    batches = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]

    def raw(encode: Callable[[list[str]], object]) -> Callable[[], None]:
        return lambda: [encode(batch) for batch in batches] and None

    cases: dict[str, Callable[[], object]] = {
        # the ids as Python lists, as tiktoken returns them and as the shards need them
        "tokenizers encode_batch": raw(lambda b: [e.ids for e in tokenizer.encode_batch(b)]),
        "tokenizers encode_batch_fast": raw(
            lambda b: [e.ids for e in tokenizer.encode_batch_fast(b)]
        ),
        "tiktoken encode_ordinary_batch": raw(
            lambda batch: encoding.encode_ordinary_batch(batch, num_threads=threads)
        ),
        "tiktoken encode_ordinary, 1 thread": raw(
            lambda batch: [encoding.encode_ordinary(text) for text in batch]
        ),
    }
    outputs = {}
    for encoder in ("tokenizers", "tiktoken"):
        for workers in (1, 2):
            name = f"shards stage, {encoder}, {workers} process{'es' if workers > 1 else ''}"
            out = work / f"shards-{encoder}-{workers}"
            outputs[name] = out
            cfg = ShardsConfig(encoder="auto" if encoder == "tiktoken" else encoder)

            def stage(out: Path = out, cfg: ShardsConfig = cfg, workers: int = workers) -> dict:
                with ProcessExecutor(workers) if workers > 1 else SerialExecutor() as executor:
                    return write_token_shards(docs_dir, tokenizer_dir, out, cfg, executor)

            cases[name] = stage

    walls: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    manifests = {}
    for _ in range(repeats):
        for name, case in cases.items():
            started, started_cpu = time.perf_counter(), cpu_seconds()
            result = case()
            walls.setdefault(name, []).append(time.perf_counter() - started)
            cpus.setdefault(name, []).append(cpu_seconds() - started_cpu)
            if isinstance(result, dict):
                manifests[name] = result
    best = {name: min(times) for name, times in walls.items()}
    best_cpu = {name: min(times) for name, times in cpus.items()}

    # Same ids from both encoders, for every document; the same shard bytes from every run.
    ids_hf = [e.ids for batch in batches for e in tokenizer.encode_batch(batch)]
    ids_tk = [ids for batch in batches for ids in encoding.encode_ordinary_batch(batch)]
    differing = sum(a != b for a, b in zip(ids_hf, ids_tk, strict=True))
    reference = next(iter(outputs.values()))
    names = sorted(p.name for p in reference.iterdir())
    identical = all(
        sorted(p.name for p in out.iterdir()) == names
        and all(
            filecmp.cmp(reference / n, out / n, shallow=False) for n in names if n.endswith(".bin")
        )
        for out in outputs.values()
    )
    encoders_used = {name: m["stats"]["encoder"] for name, m in manifests.items()}
    tokens = sum(map(len, ids_hf))

    def ratio(a: str, b: str) -> str:
        # throughput of a relative to b: by wall time, and by CPU time (less sensitive to
        # other processes on a shared machine)
        return f"{best[b] / best[a]:.2f} (CPU {best_cpu[b] / best_cpu[a]:.2f})"

    raw_hf, raw_tk = "tokenizers encode_batch_fast", "tiktoken encode_ordinary_batch"
    raw_tk1 = "tiktoken encode_ordinary, 1 thread"
    rows = [
        [name, best[name], megabytes / best[name], best_cpu[name], encoders_used.get(name, "")]
        for name in best
    ]
    ratios = [
        ["tiktoken encode_ordinary_batch / tokenizers encode_batch_fast (raw)", ratio(raw_tk, raw_hf)],
        ["tokenizers encode_batch_fast / encode_batch (raw)", ratio(raw_hf, "tokenizers encode_batch")],
        ["shards stage (tiktoken, 1 process) / raw tiktoken encode_ordinary_batch", ratio("shards stage, tiktoken, 1 process", raw_tk)],
        ["shards stage (tiktoken, 1 process) / raw tiktoken encode_ordinary, 1 thread", ratio("shards stage, tiktoken, 1 process", raw_tk1)],
        ["shards stage (tiktoken, 1 process) / raw tokenizers encode_batch_fast", ratio("shards stage, tiktoken, 1 process", raw_hf)],
        ["shards stage (tokenizers, 1 process) / raw encode_batch_fast", ratio("shards stage, tokenizers, 1 process", raw_hf)],
        ["shards stage tiktoken, 2 processes / 1 process", ratio("shards stage, tiktoken, 2 processes", "shards stage, tiktoken, 1 process")],
        ["shards stage tokenizers, 2 processes / 1 process", ratio("shards stage, tokenizers, 2 processes", "shards stage, tokenizers, 1 process")],
    ]  # fmt: skip
    report = "\n\n".join(
        [
            "# Encode throughput: token shards against the raw encoders",
            f"Machine: {machine()}. Corpus: shared news x{copies}, {len(texts):,} documents, "
            f"{megabytes:.2f} MB UTF-8, {tokens:,} tokens at vocabulary {vocab:,} "
            f"({megabytes * 1e6 / tokens:.2f} bytes per token). Best of {repeats} rounds.",
            "Command: `.venv/bin/python bench/tokenizer_encode.py"
            + (f" --vocab {vocab}" if vocab != 16384 else "")
            + (f" --repeats {repeats}" if repeats != 3 else "")
            + (f" --copies {copies}" if copies != 2 else "")
            + "`",
            table(["case", "wall s", "MB/s", "CPU s", "encoder"], rows),
            table(["throughput ratio", "wall (CPU)"], ratios),
            f"tiktoken ids == tokenizers ids: {len(texts) - differing:,} of {len(texts):,} "
            f"documents identical. Shards byte-identical across all runs (encoders, 1 and 2 "
            f"processes): {identical}.",
        ]
    )
    print(report)
    print(f"\nwrote {write_results('tokenizer_encode', report + chr(10))}")


if __name__ == "__main__":
    main()
