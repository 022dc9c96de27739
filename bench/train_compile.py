"""torch.compile on and off, on the CPU, through our Trainer (`train.compile`): tokens/s and the
compile time.

Each round runs the same training eagerly and compiled (bench/train_common.py), alternating.
Compile time = seconds to the end of step 1 compiled minus eager; round 1 compiles with an empty
inductor cache (a cold start, as on a fresh machine); later rounds run in the same process, where
Dynamo reuses the graph it traced for the first model (the parameters are graph inputs).

    .venv/bin/python bench/train_compile.py [--rounds 2] [--steps 120] [--warmup 20] [--arch llama]

Prints a table and writes bench/results/train_compile.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from train_common import environment, lightning_run, markdown_table, text_shards  # noqa: E402

from pipeline.config import ModelConfig, TrainConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "train_compile.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--arch", choices=["gpt2", "llama"], default="llama")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model_cfg = ModelConfig(
        arch=args.arch, n_layer=4, n_head=4, n_embd=128, block_size=64, bias=False
    )
    base = TrainConfig(
        max_steps=args.steps,
        batch_size=12,
        learning_rate=1e-3,
        warmup_steps=10,
        accelerator="cpu",
        devices=1,
        log_every_steps=10,
        progress_bar=False,
        sample_tokens=0,
    )
    rows, ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")  # cold at first
        shards, vocab = text_shards(Path(tmp) / "char" / "shards")
        for round_ in range(args.rounds):
            eager, _ = lightning_run(model_cfg, base, vocab, shards, args.warmup, "eager")
            compiled, _ = lightning_run(
                model_cfg, base.model_copy(update={"compile": True}), vocab, shards, args.warmup
            )
            ratio = compiled.tokens_per_second / eager.tokens_per_second
            ratios.append(ratio)
            compile_seconds = compiled.first_step_seconds - eager.first_step_seconds
            cache = "empty inductor cache" if round_ == 0 else "same process, graph reused"
            rows.append(
                [
                    str(round_ + 1),
                    f"{eager.tokens_per_second:,.0f}",
                    f"{compiled.tokens_per_second:,.0f}",
                    f"{ratio:.2f}",
                    f"{compile_seconds:.1f} ({cache})",
                    f"{eager.final_loss:.4f} / {compiled.final_loss:.4f}",
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
    table = markdown_table(
        [
            "round",
            "eager tok/s",
            "compiled tok/s",
            "compiled / eager",
            "compile time s",
            "final loss eager / compiled",
        ],
        rows,
    )
    threads = f" --threads {args.threads}" if args.threads else ""
    report = (
        "# torch.compile on the CPU\n\n"
        f"`python bench/train_compile.py --rounds {args.rounds} --steps {args.steps} "
        f"--warmup {args.warmup} --arch {args.arch}{threads}`; {environment()}.\n"
        f"Our Trainer on the shakespeare-char CPU model ({args.arch}, 4 x 128, context 64, "
        f"batch 12, fp32); tokens/s over steps {args.warmup + 1}..{args.steps}; compile time = "
        "time to the end of step 1 compiled minus eager. Median speed-up: "
        f"**{statistics.median(ratios):.2f}x**.\n\n" + table + "\n"
    )
    print("\n" + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
