"""Lightning overhead: tokens/s of our Trainer against a plain PyTorch loop, on the CPU.

The same GPT, batches, optimizer, schedule, clipping and precision (bench/train_common.py);
the two runs alternate (plain, Lightning, plain, Lightning, ...) so that a noisy, shared machine
slows both alike, and the ratio of each pair is reported with its median. Goal: >= 0.95.

    .venv/bin/python bench/train_overhead.py [--rounds 3] [--steps 150] [--warmup 20]

Prints a table and writes bench/results/train_overhead.md. Sizes: the nanoGPT CPU Shakespeare
model (4 x 128, context 64, batch 12, ~50 ms a step: the most overhead-sensitive case) and the
quickstart's (4 x 128, context 128, batch 16, vocabulary 4096, random tokens).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from train_common import (  # noqa: E402
    environment,
    lightning_run,
    markdown_table,
    plain_loop,
    random_shards,
    text_shards,
)

from pipeline.config import ModelConfig, TrainConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "train_overhead.md"


def cases(tmp: Path, steps: int) -> list[tuple[str, ModelConfig, TrainConfig, int, Path]]:
    train = dict(
        max_steps=steps,
        learning_rate=1e-3,
        warmup_steps=10,
        accelerator="cpu",
        devices=1,
        precision="32-true",
        log_every_steps=10,
        progress_bar=False,
        sample_tokens=0,
    )
    char_dir, char_vocab = text_shards(tmp / "char" / "shards")
    quick_dir = random_shards(tmp / "quick" / "shards", 4096, 400_000)
    return [
        (
            "shakespeare-char CPU (4x128, T=64, B=12)",
            ModelConfig(arch="gpt2", n_layer=4, n_head=4, n_embd=128, block_size=64, bias=False),
            TrainConfig(batch_size=12, **train),
            char_vocab,
            char_dir,
        ),
        (
            "quickstart (4x128, T=128, B=16, V=4096)",
            ModelConfig(arch="gpt2", n_layer=4, n_head=4, n_embd=128, block_size=128),
            TrainConfig(batch_size=16, **train),
            4096,
            quick_dir,
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model_cfg, train, vocab, shards in cases(Path(tmp), args.steps):
            ratios, plain_rates, lit_rates = [], [], []
            for round_ in range(args.rounds):
                plain = plain_loop(model_cfg, train, vocab, shards, args.warmup)
                lit, _ = lightning_run(model_cfg, train, vocab, shards, args.warmup)
                ratios.append(lit.tokens_per_second / plain.tokens_per_second)
                plain_rates.append(plain.tokens_per_second)
                lit_rates.append(lit.tokens_per_second)
                print(
                    f"{name} round {round_ + 1}: plain {plain.tokens_per_second:,.0f} tok/s, "
                    f"Lightning {lit.tokens_per_second:,.0f} tok/s, ratio {ratios[-1]:.3f} "
                    f"(final loss {plain.final_loss:.4f} / {lit.final_loss:.4f})",
                    flush=True,
                )
            rows.append(
                [
                    name,
                    f"{statistics.median(plain_rates):,.0f}",
                    f"{statistics.median(lit_rates):,.0f}",
                    ", ".join(f"{r:.3f}" for r in ratios),
                    f"**{statistics.median(ratios):.3f}**",
                ]
            )
    table = markdown_table(
        [
            "model",
            "plain loop tok/s (median)",
            "Lightning tok/s (median)",
            "ratio per round",
            "ratio (median)",
        ],
        rows,
    )
    threads = f" --threads {args.threads}" if args.threads else ""
    report = (
        "# Lightning overhead on the CPU\n\n"
        f"`python bench/train_overhead.py --rounds {args.rounds} --steps {args.steps} "
        f"--warmup {args.warmup}{threads}`; {environment()}.\n"
        f"Tokens/s over steps {args.warmup + 1}..{args.steps} (fp32, no compile); ratio = "
        "Lightning / plain loop, per alternating pair. Goal: >= 0.95.\n\n" + table + "\n"
    )
    print("\n" + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
