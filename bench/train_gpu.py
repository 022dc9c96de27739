"""GPU throughput of the gpt2-small config (124M, context 1024, bf16, torch.compile, SDPA):
tokens/s and MFU of our Trainer after a short run, and of a plain PyTorch loop beside it.

    .venv/bin/python bench/train_gpu.py                 # on a GPU: a few minutes
    .venv/bin/python bench/train_gpu.py --tiny          # the same code on the CPU, a tiny model

The model and train settings come from configs/gpt2-small.yaml (the `model` and `train`
sections); the run is short: `--warmup` untimed steps (compile, allocator), then `--steps`
timed ones, with `--grad-accum` micro-batches of the config's batch size per step. Tokens are
random ids (speed does not depend on them). MFU = tokens/s x FLOPs per token (6 N + 12 L H Q T,
GPT.flops_per_token) / the device's dense bf16 peak from our table
(pipeline.train.lit_module.PEAK_BF16_FLOPS; `--peak-flops` to give one). Goal on an
H100/H200-class GPU: MFU >= 50%.

Writes bench/results/train_gpu_<device>.md (`--out` to choose).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import yaml  # noqa: E402
from train_common import (  # noqa: E402
    environment,
    lightning_run,
    markdown_table,
    plain_loop,
    random_shards,
)

from pipeline.config import ModelConfig, TrainConfig  # noqa: E402
from pipeline.model.gpt import GPT, GPTConfig  # noqa: E402
from pipeline.train.lit_module import peak_flops  # noqa: E402
from pipeline.train.pretrain import resolve_precision  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "gpt2-small.yaml"
VOCAB = 50304


def gpt2_small_settings(
    *,
    tiny: bool,
    steps: int,
    warmup: int,
    grad_accum: int,
    batch_size: int | None = None,
    compile: bool | None = None,
    compile_mode: str | None = None,
    strategy: str | None = None,
) -> tuple[ModelConfig, TrainConfig, int]:
    """The model and train sections of configs/gpt2-small.yaml for a short timed run
    (`tiny`: the same code path at a size the CPU runs in seconds); (model, train, vocab)."""
    raw = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    model = ModelConfig.model_validate(raw["model"])
    train = TrainConfig.model_validate(raw["train"])
    vocab = int(raw.get("tokenizer", {}).get("vocab_size", VOCAB))
    update = dict(
        max_steps=warmup + steps,
        grad_accum_steps=grad_accum,
        log_every_steps=max(1, steps),
        progress_bar=False,
        sample_tokens=0,
    )
    if tiny:
        model = model.model_copy(update=dict(n_layer=2, n_head=2, n_embd=64, block_size=128))
        update.update(
            accelerator="cpu", devices=1, precision="32-true", batch_size=4, compile=False
        )
        vocab = 512
    for key, value in (
        ("batch_size", batch_size),
        ("compile", compile),
        ("compile_mode", compile_mode),
        ("strategy", strategy),
    ):
        if value is not None:
            update[key] = value
    return model, train.model_copy(update=update), vocab


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU (a test)")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (compile)")
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--plain", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--strategy", default=None, help="e.g. fsdp (default: the config's)")
    parser.add_argument("--peak-flops", type=float, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    model_cfg, train, vocab = gpt2_small_settings(
        tiny=args.tiny,
        steps=args.steps,
        warmup=args.warmup,
        grad_accum=args.grad_accum,
        batch_size=args.batch_size,
        compile=args.compile,
        strategy=args.strategy,
    )
    on_gpu = torch.cuda.is_available() and train.accelerator != "cpu"
    device_name = torch.cuda.get_device_name() if on_gpu else "cpu"
    precision = resolve_precision(train)
    peak = args.peak_flops or (peak_flops(device_name, precision) if on_gpu else None)
    with torch.device("meta"):
        gpt = GPT(GPTConfig.from_model_config(model_cfg, vocab))
    flops = gpt.flops_per_token()
    tokens_per_step = train.batch_size * train.grad_accum_steps * model_cfg.block_size
    print(
        f"{device_name}: {gpt.num_params() / 1e6:.1f}M-param {model_cfg.arch} GPT, "
        f"context {model_cfg.block_size}, {tokens_per_step:,} tokens/step "
        f"({train.batch_size} x {train.grad_accum_steps} x {model_cfg.block_size}), "
        f"{precision}, compile {train.compile}, {flops / 1e9:.3f} GFLOP/token, "
        f"peak {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s",
        flush=True,
    )

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tokens = max(2_000_000, 4 * tokens_per_step)
        shards = random_shards(Path(tmp) / "shards", vocab, tokens if on_gpu else 200_000)
        lit, _ = lightning_run(model_cfg, train, vocab, shards, args.warmup)
        runs.append(lit)
        if args.plain:
            runs.append(plain_loop(model_cfg, train, vocab, shards, args.warmup))

    rows = []
    for run in runs:
        mfu = run.tokens_per_second * flops / peak if peak else None
        rows.append(
            [
                run.name,
                f"{run.tokens_per_second:,.0f}",
                f"{100 * mfu:.1f}%" if mfu is not None else "n/a (no peak)",
                f"{run.first_step_seconds:.1f}",
                f"{run.peak_memory_gb:.1f}" if run.peak_memory_gb is not None else "n/a",
                f"{run.final_loss:.4f}",
            ]
        )
    if len(runs) == 2:
        ratio = runs[0].tokens_per_second / runs[1].tokens_per_second
        rows.append(["Lightning / plain", f"{ratio:.3f}", "", "", "", ""])
    table = markdown_table(
        ["run", "tokens/s", "MFU", "s to end of step 1 (compile)", "peak GB", "final loss"],
        rows,
    )
    command = "python bench/train_gpu.py " + " ".join(sys.argv[1:])
    report = (
        f"# gpt2-small training throughput{' (tiny CPU test run)' if args.tiny else ''}\n\n"
        f"`{command.strip()}`; {environment()}.\n"
        f"{gpt.num_params() / 1e6:.1f}M params, context {model_cfg.block_size}, "
        f"{tokens_per_step:,} tokens per optimizer step, {precision}, compile {train.compile}, "
        f"{flops / 1e9:.3f} GFLOP/token (6N + 12LHQT), {args.warmup} warm-up + {args.steps} timed "
        f"steps, random tokens. Peak used for MFU: "
        f"{f'{peak / 1e12:.0f} TFLOP/s' if peak else 'none'}.\n\n" + table + "\n"
    )
    print("\n" + table)
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")
    out = (
        args.out
        or REPO / "bench" / "results" / f"train_gpu_{slug}{'_tiny' if args.tiny else ''}.md"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report, encoding="utf-8")
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
