"""The parts of the GPU check (bench/gpu_check.py), one per process.

    python bench/gpu_parts.py PART RESULT.json --work DIR [--tiny] [--nanogpt DIR]

In: the part's name, a scratch folder; `--tiny` runs the same code on the CPU at toy sizes (CI).
Out: RESULT.json = {"summary": one line of key figures, "markdown": the part's report section,
"numbers": {...}, "goals": [[goal, value, met], ...]}; exit status 0. Anything that breaks
raises: the traceback goes to the log and the exit status is 1.

Parts (what each measures is in its docstring): environment, throughput, shakespeare, nanogpt,
finetune, resume, batch_size, max_autotune.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from train_common import (  # noqa: E402
    SHAKESPEARE,
    Timing,
    lightning_run,
    markdown_table,
    plain_loop,
    random_shards,
)
from train_gpu import gpt2_small_settings  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.model.gpt import GPT, GPTConfig  # noqa: E402
from pipeline.train.lit_module import peak_flops  # noqa: E402
from pipeline.train.pretrain import resolve_precision  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
BOTCHAN = REPO / "data" / "sample" / "botchan.txt"

# Timed steps of the gpt2-small throughput runs: (warm-up, timed) optimizer steps, each of
# GRAD_ACCUM micro-batches of the config's 16 x 1024 tokens (~1.3 M tokens timed).
THROUGHPUT_STEPS = (3, 20)
GRAD_ACCUM = 4
FINETUNE_STEPS = 200
FINETUNE_EVAL_LIMIT = 50  # held-out examples per task, scored before and after
LORA = "{rank: 16, alpha: 32}"
FINETUNE_RUN_SECONDS = 110  # one fine-tune + evaluation of the 124M model on an H200, about
RESUME_STEPS, RESUME_EVERY = 400, 100


@dataclass
class Context:
    work: Path
    tiny: bool
    nanogpt: Path | None
    deadline: float  # time.time() by which the part must be done (the orchestrator kills it)

    def seconds_left(self) -> float:
        return self.deadline - time.time()


def result(summary: str, markdown: str, numbers: dict, goals: list | None = None) -> dict:
    return {"summary": summary, "markdown": markdown, "numbers": numbers, "goals": goals or []}


def on_gpu() -> bool:
    return torch.cuda.is_available()


def gpu_name() -> str:
    return torch.cuda.get_device_name() if on_gpu() else "cpu"


def fmt_gb(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "n/a"


# ------------------------------------------------------------------------------ environment


def _command_output(command: list[str]) -> str:
    if not shutil.which(command[0]):
        return f"{command[0]}: not found"
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    return (done.stdout + done.stderr).strip()


def matmul_tflops(size: int = 8192, repeats: int = 10) -> float | None:
    """bf16 matrix product on random data (the ceiling the device reaches in practice)."""
    if not on_gpu():
        return None
    a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / repeats
    return 2 * size**3 / seconds / 1e12


def part_environment(ctx: Context) -> dict:
    """GPU, driver, CUDA, torch, Lightning and Triton versions, an nvidia-smi snapshot, and the
    bf16 matmul rate the device reaches on random data."""
    import platform

    import pytorch_lightning

    numbers: dict[str, Any] = {
        "gpu": gpu_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if on_gpu() else None,
        "lightning": pytorch_lightning.__version__,
        "cpu_count": os.cpu_count(),
    }
    try:
        import triton

        numbers["triton"] = triton.__version__
    except ImportError:
        numbers["triton"] = None
    if on_gpu():
        props = torch.cuda.get_device_properties(0)
        numbers.update(
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            gpu_memory_gb=round(props.total_memory / 1e9, 1),
            driver=_command_output(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            ),
            bf16_peak_tflops_table=(peak_flops(gpu_name(), "bf16-mixed") or 0) / 1e12,
        )
        numbers["bf16_matmul_tflops_measured"] = round(matmul_tflops(), 1)
    rows = [[key, str(value)] for key, value in numbers.items()]
    smi = _command_output(["nvidia-smi"])
    markdown = markdown_table(["", ""], rows) + f"\n\n```\n{smi}\n```\n"
    summary = f"{numbers['gpu']}, torch {numbers['torch']}, CUDA {numbers['cuda']}"
    if "driver" in numbers:
        summary += f", driver {numbers['driver']}"
    if numbers.get("bf16_matmul_tflops_measured"):
        summary += f"; 8192^3 bf16 matmul {numbers['bf16_matmul_tflops_measured']} TFLOP/s"
    return result(summary, markdown, numbers)


# ------------------------------------------------------------------------------- throughput


def _gpt2_small(
    ctx: Context, grad_accum: int = GRAD_ACCUM, **changes: Any
) -> tuple[Any, Any, int, float, float | None]:
    warmup, steps = (2, 3) if ctx.tiny else THROUGHPUT_STEPS
    model_cfg, train, vocab = gpt2_small_settings(
        tiny=ctx.tiny, steps=steps, warmup=warmup, grad_accum=grad_accum, **changes
    )
    with torch.device("meta"):
        flops = GPT(GPTConfig.from_model_config(model_cfg, vocab)).flops_per_token()
    peak = peak_flops(gpu_name(), resolve_precision(train)) if on_gpu() else None
    return model_cfg, train, vocab, flops, peak


def _shards(ctx: Context, vocab: int, tokens_per_step: int) -> Path:
    folder = ctx.work / f"random-shards-{vocab}"
    if not folder.is_dir():
        random_shards(folder, vocab, max(2_000_000, 4 * tokens_per_step) if on_gpu() else 200_000)
    return folder


def _timing_rows(runs: list[Timing], flops: float, peak: float | None) -> list[list[str]]:
    rows = []
    for run in runs:
        mfu = run.tokens_per_second * flops / peak if peak else None
        rows.append(
            [
                run.name,
                f"{run.tokens_per_second:,.0f}",
                f"{100 * mfu:.1f}%" if mfu is not None else "n/a",
                f"{run.first_step_seconds:.1f}",
                fmt_gb(run.peak_memory_gb),
                f"{run.final_loss:.4f}",
            ]
        )
    return rows


TIMING_HEADER = ["run", "tokens/s", "MFU", "s to end of step 1 (compile)", "peak GB", "loss"]


def _mfu(run: Timing, flops: float, peak: float | None) -> float | None:
    return run.tokens_per_second * flops / peak if peak else None


def _setup_line(model_cfg: Any, train: Any, warmup: int, flops: float, peak: float | None) -> str:
    tokens = train.batch_size * train.grad_accum_steps * model_cfg.block_size
    return (
        f"{model_cfg.n_layer} layers x {model_cfg.n_embd}, context {model_cfg.block_size}, "
        f"batch {train.batch_size} x {train.grad_accum_steps} accumulation = {tokens:,} tokens "
        f"per optimizer step, {resolve_precision(train)}, compile {train.compile} "
        f"({train.compile_mode}), {train.max_steps} steps of which the first {warmup} untimed, "
        f"{flops / 1e9:.3f} GFLOP/token; MFU against "
        f"{f'{peak / 1e12:.0f} TFLOP/s' if peak else 'no peak (CPU)'}"
    )


def part_throughput(ctx: Context) -> dict:
    """The 124M GPT-2 of configs/gpt2-small.yaml through our Lightning trainer and a plain PyTorch
    loop, the same batches and work: tokens/s, MFU, peak memory, the ratio; then the plain loop
    with AdamW unfused (the compiled graph comes from the inductor cache)."""
    model_cfg, train, vocab, flops, peak = _gpt2_small(ctx)
    tokens_per_step = train.batch_size * train.grad_accum_steps * model_cfg.block_size
    shards = _shards(ctx, vocab, tokens_per_step)
    warmup = train.max_steps - (3 if ctx.tiny else THROUGHPUT_STEPS[1])
    lit, _ = lightning_run(model_cfg, train, vocab, shards, warmup)
    plain = plain_loop(model_cfg, train, vocab, shards, warmup)
    unfused = plain_loop(
        model_cfg, train, vocab, shards, warmup, name="plain loop, AdamW not fused", fused=False
    )
    runs = [lit, plain, unfused]
    ratio = lit.tokens_per_second / plain.tokens_per_second
    rows = _timing_rows(runs, flops, peak) + [["Lightning / plain", f"{ratio:.3f}"] + [""] * 4]
    mfu = _mfu(lit, flops, peak)
    numbers = {
        "lightning_tokens_per_second": lit.tokens_per_second,
        "plain_tokens_per_second": plain.tokens_per_second,
        "unfused_tokens_per_second": unfused.tokens_per_second,
        "lightning_over_plain": ratio,
        "mfu_lightning": mfu,
        "mfu_plain": _mfu(plain, flops, peak),
        "peak_memory_gb": lit.peak_memory_gb,
        "compile_seconds_lightning": lit.first_step_seconds,
    }
    goals = [["Lightning / plain >= 0.97", f"{ratio:.3f}", ratio >= 0.97]]
    if mfu is not None:
        goals.append(["MFU >= 50% (our trainer, gpt2-small)", f"{100 * mfu:.1f}%", mfu >= 0.5])
    markdown = _setup_line(model_cfg, train, warmup, flops, peak) + ".\n\n"
    markdown += markdown_table(TIMING_HEADER, rows) + "\n"
    summary = f"Lightning {lit.tokens_per_second:,.0f} tok/s"
    if mfu is not None:
        summary += f", MFU {100 * mfu:.1f}%"
    summary += f", Lightning/plain {ratio:.3f}, peak {fmt_gb(lit.peak_memory_gb)} GB"
    return result(summary, markdown, numbers, goals)


def _plain_lever(ctx: Context, label: str, float32_matmuls: str = "high", **changes: Any) -> dict:
    model_cfg, train, vocab, flops, peak = _gpt2_small(ctx, **changes)
    tokens_per_step = train.batch_size * train.grad_accum_steps * model_cfg.block_size
    shards = _shards(ctx, vocab, tokens_per_step)
    warmup = train.max_steps - (3 if ctx.tiny else THROUGHPUT_STEPS[1])
    if on_gpu():  # "high": TF32 tensor cores for fp32 matmuls (what training sets)
        torch.set_float32_matmul_precision(float32_matmuls)
    run = plain_loop(model_cfg, train, vocab, shards, warmup, name=f"plain loop, {label}")
    mfu = _mfu(run, flops, peak)
    markdown = _setup_line(model_cfg, train, warmup, flops, peak) + ".\n\n"
    markdown += markdown_table(TIMING_HEADER, _timing_rows([run], flops, peak)) + "\n"
    summary = f"{label}: {run.tokens_per_second:,.0f} tok/s"
    if mfu is not None:
        summary += f", MFU {100 * mfu:.1f}%"
    summary += f", compile {run.first_step_seconds:.0f} s, peak {fmt_gb(run.peak_memory_gb)} GB"
    numbers = {
        "tokens_per_second": run.tokens_per_second,
        "mfu": mfu,
        "first_step_seconds": run.first_step_seconds,
        "peak_memory_gb": run.peak_memory_gb,
    }
    return result(summary, markdown, numbers)


def part_batch_size(ctx: Context) -> dict:
    """The plain loop at micro-batch 32 x 2 accumulation (the same tokens per optimizer step as
    the throughput part's 16 x 4): bigger matmuls, more memory."""
    return _plain_lever(
        ctx, "micro-batch 32 x 2", batch_size=8 if ctx.tiny else 32, grad_accum=GRAD_ACCUM // 2
    )


def part_tf32(ctx: Context) -> dict:
    """The plain loop with TF32 off: the fp32 matmuls that autocast leaves in fp32 run in full
    fp32 (set_float32_matmul_precision("highest") instead of "high")."""
    return _plain_lever(ctx, "TF32 off", float32_matmuls="highest")


def part_max_autotune(ctx: Context) -> dict:
    """The plain loop compiled with mode max-autotune (inductor benchmarks matmul kernels and
    uses CUDA graphs): compile time against speed."""
    changes: dict[str, Any] = {"compile_mode": "max-autotune"}
    if ctx.tiny:
        changes["compile"] = False  # the CPU inductor takes minutes; the code path is the same
    return _plain_lever(ctx, "compile max-autotune", **changes)


# ------------------------------------------------------------------------------ shakespeare


def _log_to_stdout(line: str) -> None:
    print(line, flush=True)


def _run_stages(config: Any, workdir: Path, until: str) -> dict[str, dict]:
    """Run the pipeline's stages in DAG order up to and including `until` (no MLflow)."""
    from pipeline.dag import plan, run_stage

    manifests = {}
    for planned in plan(config, workdir):
        started = time.perf_counter()
        result = run_stage(planned, config, tracking_uri=None, log=_log_to_stdout)
        manifests[planned.name] = {**result.to_dict(), "seconds": time.perf_counter() - started}
        print(f"stage {planned.name}: {manifests[planned.name]['seconds']:.1f} s", flush=True)
        if planned.name == until:
            break
    return manifests


def _shakespeare_text() -> Path:
    return SHAKESPEARE if SHAKESPEARE.is_file() else BOTCHAN


TINY_MODEL = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=64",
    "model.block_size=64",
]


def _shakespeare_overrides(ctx: Context, workdir: Path) -> list[str]:
    sets = [f"workdir={workdir}", f"sources.0.path={_shakespeare_text()}"]
    if ctx.tiny:
        sets += TINY_MODEL + [
            "train.max_steps=20",
            "train.batch_size=8",
            "train.val_every_steps=10",
            "train.val_batches=2",
            "train.checkpoint_every_steps=10",
            "train.compile=false",
            "train.accelerator=cpu",
            "train.sample_tokens=20",
        ]
    return sets


def _shakespeare_run(ctx: Context, label: str, extra: list[str]) -> dict[str, Any]:
    workdir = ctx.work / "shakespeare"
    config = load_config(
        CONFIGS / "shakespeare-char-gpu.yaml", _shakespeare_overrides(ctx, workdir) + extra
    )
    manifests = _run_stages(config, workdir, until="pretrain")
    pretrain = manifests["pretrain"]
    metrics = pretrain["metrics"]
    return {
        "label": label,
        "arch": metrics["arch"],
        "steps": metrics["steps"],
        "val_loss": metrics["val_loss"],
        "best_val_loss": metrics.get("best_val_loss"),
        "train_loss": metrics["train_loss"],
        "training_seconds": metrics["wall_seconds"],
        "stage_seconds": pretrain["seconds"],
        "tokens_per_second": metrics.get("steady_tokens_per_second"),
        "peak_memory_gb": metrics.get("peak_gpu_memory_gb"),
        "params": metrics["num_params"],
        "best_step": metrics.get("best_step"),
        "final_weights": metrics.get("final_weights"),
        "data_stage_seconds": sum(
            m["seconds"] for name, m in manifests.items() if name != "pretrain"
        ),
    }


def _shakespeare_row(run: dict[str, Any]) -> list[str]:
    best = run.get("best_val_loss")
    return [
        run["label"],
        f"{run['params']:,}",
        str(run["steps"]),
        f"{run['val_loss']:.4f}",
        f"{best:.4f}" if best is not None else "-",
        f"{run['training_seconds']:.1f}",
        f"{run['tokens_per_second']:,.0f}" if run.get("tokens_per_second") else "-",
        fmt_gb(run.get("peak_memory_gb")),
    ]


SHAKESPEARE_HEADER = [
    "run",
    "params",
    "steps",
    "val loss at the end",
    "best val loss",
    "wall s (process start to end)",
    "tokens/s (steady)",
    "peak GB",
]


def part_shakespeare(ctx: Context) -> dict:
    """configs/shakespeare-char-gpu.yaml (nanoGPT's GPU budget, our llama recipe) through the
    pipeline's stages: ingest .. shards, then pretrain (`python -m pipeline.train`): the val loss
    at the end (200 batches, as nanoGPT's eval_iters) and the training process's wall time."""
    run = _shakespeare_run(ctx, "ours: llama, configs/shakespeare-char-gpu.yaml", [])
    goals = []
    if not ctx.tiny:
        met = run["val_loss"] <= 1.45
        goals.append(["Shakespeare-char val loss <= 1.45", f"{run['val_loss']:.4f}", met])
    markdown = markdown_table(SHAKESPEARE_HEADER, [_shakespeare_row(run)]) + "\n"
    markdown += (
        f"\nData stages (ingest .. shards) took {run['data_stage_seconds']:.1f} s before "
        "training. nanoGPT reports 1.4697 (best val, ~3 min on an A100).\n"
    )
    summary = (
        f"val loss {run['val_loss']:.4f} after {run['steps']} steps (best "
        f"{run['best_val_loss'] or float('nan'):.4f} at step {run['best_step']}; final/ holds "
        f"the {run['final_weights']}), {run['training_seconds']:.0f} s"
    )
    return result(summary, markdown, run, goals)


NANOGPT_STEP = re.compile(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)")
NANOGPT_ITER = re.compile(r"iter (\d+): loss ([\d.]+), time ([\d.]+)ms, mfu (-?[\d.]+)%")


def _nanogpt_reference(ctx: Context, source: Path) -> dict[str, Any]:
    """nanoGPT's own train.py with config/train_shakespeare_char.py, on its prepared data."""
    folder = ctx.work / "nanoGPT"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(source, folder)
    data = folder / "data" / "shakespeare_char"
    shutil.copyfile(_shakespeare_text(), data / "input.txt")  # prepare.py then skips its download
    subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True)
    command = [sys.executable, "train.py", "config/train_shakespeare_char.py", "--out_dir=out"]
    if ctx.tiny:
        command += [
            "--device=cpu",
            "--compile=False",
            "--dtype=float32",
            "--max_iters=20",
            "--lr_decay_iters=20",
            "--eval_interval=10",
            "--eval_iters=2",
            "--n_layer=2",
            "--n_head=2",
            "--n_embd=64",
            "--block_size=64",
            "--batch_size=8",
        ]
    tokens_per_iter = 8 * 64 if ctx.tiny else 64 * 256  # batch x context of the config
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    evaluations = [line for line in done.stdout.splitlines() if NANOGPT_STEP.search(line)]
    print("\n".join(evaluations) + "\n" + done.stderr[-4000:], flush=True)
    if done.returncode != 0:
        raise RuntimeError(f"nanoGPT's train.py failed with exit status {done.returncode}")
    evals = [(int(s), float(t), float(v)) for s, t, v in NANOGPT_STEP.findall(done.stdout)]
    # the median iteration: the ones that include an evaluation take ~2 s
    iter_ms = sorted(float(ms) for _, _, ms, _ in NANOGPT_ITER.findall(done.stdout))
    step, train_loss, val_loss = evals[-1]
    return {
        "label": "nanoGPT train.py, config/train_shakespeare_char.py (GPT-2 blocks)",
        "arch": "gpt2 (nanoGPT)",
        "steps": step,
        "val_loss": val_loss,
        "best_val_loss": min(v for _, _, v in evals),
        "train_loss": train_loss,
        "training_seconds": seconds,
        "tokens_per_second": tokens_per_iter / (iter_ms[len(iter_ms) // 2] / 1000)
        if iter_ms
        else None,
        "peak_memory_gb": None,
        "params": _nanogpt_params(done.stdout),
        "median_iter_ms": iter_ms[len(iter_ms) // 2] if iter_ms else None,
        "best_step": min(evals, key=lambda e: e[2])[0],
    }


def _nanogpt_params(log: str) -> int:
    found = re.search(r"number of parameters: ([\d.]+)M", log)
    return int(float(found.group(1)) * 1e6) if found else 0


def part_nanogpt(ctx: Context) -> dict:
    """The reference for the Shakespeare time: nanoGPT's own train.py and config on the same GPU
    (`--nanogpt DIR`, a nanoGPT checkout), or, without one, nanoGPT's model (GPT-2 blocks, no
    biases) and schedule through our pipeline."""
    if ctx.nanogpt is not None:
        run = _nanogpt_reference(ctx, ctx.nanogpt)
    else:
        nanogpt_model = ["model.arch=gpt2", "model.bias=false"]
        run = _shakespeare_run(ctx, "ours: nanoGPT's model and schedule (gpt2)", nanogpt_model)
    markdown = markdown_table(SHAKESPEARE_HEADER, [_shakespeare_row(run)]) + "\n"
    if run.get("median_iter_ms"):
        markdown += (
            f"\nnanoGPT's median logged iteration: {run['median_iter_ms']:.1f} ms; its best val "
            f"loss was at step {run['best_step']}.\n"
        )
    summary = (
        f"{run['label']}: val loss {run['val_loss']:.4f} (best {run['best_val_loss']:.4f}), "
        f"{run['training_seconds']:.0f} s"
    )
    return result(summary, markdown, run)


# --------------------------------------------------------------------------------- finetune

FINETUNE_METRICS = {
    "classification": ["acc", "macro_f1"],
    "qa": ["exact_match", "f1"],
    "summarization": ["rouge1", "rougeL"],
    "translation": ["bleu", "chrf"],
}


def _task_texts(config: Any) -> list[str]:
    """Prompts and responses of every fine-tuning task (train and held-out): tokenizer food."""
    from pipeline.finetune.examples import read_examples
    from pipeline.quarantine import Quarantine

    texts = []
    quarantine = Quarantine(Path(config.workdir) / "tokenizer-quarantine")
    for task in config.finetune.tasks:
        for example in read_examples(task, config.base_dir, quarantine, split="all"):
            texts.append(example.prompt + example.response)
    return texts


def random_gpt2_folder(ctx: Context, config: Any) -> Path:
    """A randomly initialised GPT-2 (124M; tiny: 2 x 64) with a byte-level BPE trained on the
    tasks' text, written by our `llmpipe export` code as a Hugging Face GPT-2 folder."""
    from pipeline.config import TokenizerConfig
    from pipeline.model.checkpoint import save_model
    from pipeline.model.hf import export_hf
    from pipeline.tokenizer.train_bpe import train_bpe

    texts = _task_texts(config)
    vocab = 512 if ctx.tiny else 50257  # GPT-2's
    started = time.perf_counter()
    batches = (texts[i : i + 1000] for i in range(0, len(texts), 1000))
    tokenizer = train_bpe(batches, TokenizerConfig(vocab_size=vocab), len(texts))
    print(
        f"tokenizer: {tokenizer.get_vocab_size():,} tokens from {len(texts):,} texts in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    shape = dict(n_layer=2, n_head=2, n_embd=64, block_size=128) if ctx.tiny else {}
    gpt_config = GPTConfig(
        vocab_size=64 * -(-tokenizer.get_vocab_size() // 64),  # 50304, as GPT-2 small trains
        block_size=shape.get("block_size", 1024),
        n_layer=shape.get("n_layer", 12),
        n_head=shape.get("n_head", 12),
        n_embd=shape.get("n_embd", 768),
        arch="gpt2",
        bias=True,
        activation="gelu_tanh",
    )
    torch.manual_seed(0)
    ours = ctx.work / "gpt2-random-ours"
    save_model(GPT(gpt_config), ours)
    tokenizer.save(str(ours / "tokenizer.json"))
    return export_hf(ours, ctx.work / "gpt2-random-hf")


def _finetune_overrides(ctx: Context, hf_dir: Path | None, workdir: Path) -> list[str]:
    sets = [
        f"workdir={workdir}",
        f"finetune.train.max_steps={4 if ctx.tiny else FINETUNE_STEPS}",
        f"finetune.train.val_every_steps={2 if ctx.tiny else 100}",
        f"finetune.train.checkpoint_every_steps={2 if ctx.tiny else 100}",
        f"evaluate.limit={4 if ctx.tiny else FINETUNE_EVAL_LIMIT}",
    ]
    if hf_dir is not None:
        sets.append(f"finetune.init_from={hf_dir}")
    if ctx.tiny:
        sets += [
            "finetune.train.batch_size=2",
            "finetune.train.val_batches=2",
            "finetune.train.compile=false",
            "finetune.train.accelerator=cpu",
            "evaluate.batch_size=4",
            "evaluate.device=cpu",
            "evaluate.max_new_tokens=8",
        ]
        sets += [f"evaluate.tasks.{i}.max_new_tokens=8" for i in range(4)]
    return sets


def part_finetune(ctx: Context) -> dict:
    """configs/finetune-gpt2-124m.yaml from a randomly initialised 124M GPT-2 folder (exported by
    our own code; no hub weights here), a few hundred steps, full and with LoRA: steps/s, peak
    memory, held-out loss, and every task scored before (`base_`) and after."""
    workdir = ctx.work / "finetune"
    config_path = CONFIGS / "finetune-gpt2-124m.yaml"
    hf_dir = random_gpt2_folder(
        ctx, load_config(config_path, _finetune_overrides(ctx, None, workdir))
    )
    rows, scores, numbers, goals = [], [], {}, []
    for label, lora in (("full", None), ("LoRA r=16", LORA)):
        if numbers and not ctx.tiny and ctx.seconds_left() < FINETUNE_RUN_SECONDS:
            note = f"not run: {ctx.seconds_left():.0f} s left of the part's time"
            print(f"{label}: {note}", flush=True)
            goals.append([f"every task scored before and after ({label})", note, False])
            continue
        sets = _finetune_overrides(ctx, hf_dir, workdir)
        if lora:
            sets.append(f"finetune.lora={lora}")
        config = load_config(config_path, sets)
        manifests = _run_stages(config, workdir, until="evaluate")
        ft = manifests["finetune"]["metrics"]
        evaluated = manifests["evaluate"]["metrics"]
        tokens_per_step = ft["tokens_seen"] / ft["steps"]
        steady = ft.get("steady_tokens_per_second") or 0
        steps_per_second = steady / tokens_per_step
        run = {
            "steps": ft["steps"],
            "steps_per_second": steps_per_second,
            "tokens_per_second": steady,
            "tokens_per_second_with_pauses": ft["tokens_per_second"],
            "peak_memory_gb": ft.get("peak_gpu_memory_gb"),
            "val_loss": ft["val_loss"],
            "trainable_params": ft.get("trainable_params", ft["num_params"]),
            "training_seconds": ft["wall_seconds"],
            "finetune_stage_seconds": manifests["finetune"]["seconds"],
            "evaluate_stage_seconds": manifests["evaluate"]["seconds"],
        }
        numbers[label] = run
        rows.append(
            [
                label,
                str(run["steps"]),
                f"{steps_per_second:.2f}",
                f"{run['tokens_per_second']:,.0f}",
                f"{run['tokens_per_second_with_pauses']:,.0f}",
                fmt_gb(run["peak_memory_gb"]),
                f"{run['trainable_params']:,}",
                f"{run['val_loss']:.3f}",
                f"{run['training_seconds']:.0f}",
                f"{run['evaluate_stage_seconds']:.0f}",
            ]
        )
        missing = []
        for task in config.evaluate.tasks:
            for metric in FINETUNE_METRICS.get(task.type, []):
                before = evaluated.get(f"base_{task.name}_{metric}")
                after = evaluated.get(f"{task.name}_{metric}")
                if before is None or after is None:
                    missing.append(f"{task.name}_{metric}")
                    continue
                scores.append([label, task.name, metric, f"{before:.3f}", f"{after:.3f}"])
        found = "missing: " + ", ".join(missing) if missing else "all"
        goals.append([f"every task scored before and after ({label})", found, not missing])
    markdown = (
        f"From a random 124M GPT-2 (our export), {FINETUNE_STEPS} steps of the config's "
        f"batch, held-out limit {FINETUNE_EVAL_LIMIT} per task; LoRA {LORA}.\n\n"
        + markdown_table(
            [
                "fine-tune",
                "steps",
                "steps/s",
                "tokens/s",
                "tokens/s with compile, validation, checkpoints",
                "peak GB",
                "trained params",
                "held-out loss",
                "training wall s",
                "evaluate s",
            ],
            rows,
        )
        + "\n\nScores (a random model learns little in a few hundred steps: what this checks "
        "is that every task is scored on both models, on the GPU):\n\n"
        + markdown_table(["fine-tune", "task", "metric", "before", "after"], scores)
        + "\n"
    )
    summary = "; ".join(
        f"{label} {run['steps_per_second']:.2f} steps/s, {fmt_gb(run['peak_memory_gb'])} GB"
        for label, run in numbers.items()
    )
    summary += f"; {len(scores)} task metrics before/after"
    return result(summary, markdown, numbers, goals)


# ----------------------------------------------------------------------------------- resume


def _resume_request(ctx: Context, out: Path, shards: Path, vocab: int) -> Path:
    """The Shakespeare GPU config's model and train settings, shorter, checkpointing often."""
    from pipeline.train.request import PretrainData, TrainRequest

    config = load_config(CONFIGS / "shakespeare-char-gpu.yaml", _shakespeare_overrides(ctx, out))
    steps, every = (60, 10) if ctx.tiny else (RESUME_STEPS, RESUME_EVERY)
    train = config.train.model_copy(
        update=dict(
            max_steps=steps,
            checkpoint_every_steps=every,
            val_every_steps=every,
            val_batches=2 if ctx.tiny else 20,
            keep_last_checkpoints=100,
            log_every_steps=10,
            progress_bar=False,
            sample_tokens=0,
        )
    )
    data = PretrainData(shards_dir=str(shards), vocab_size=vocab)
    request = TrainRequest(model=config.model, train=train, data=data, out_dir=str(out))
    return request.to_json(out.parent / f"{out.name}.json")


def _train_command(request: Path) -> list[str]:
    return [sys.executable, "-u", "-m", "pipeline.train", str(request)]


def _curve_and_weights(out: Path) -> tuple[dict[int, float], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    from pipeline.train.checkpoints import latest_checkpoint

    last = latest_checkpoint(out / "checkpoints")
    state = torch.load(last / "trainer_state.ckpt", weights_only=True, map_location="cpu")
    curve = {int(step): float(loss) for step, loss in state["loss_history"]["train"]}
    return curve, load_file(str(out / "final" / "model.safetensors"))


def _differences(a: Path, b: Path) -> dict[str, Any]:
    curve_a, weights_a = _curve_and_weights(a)
    curve_b, weights_b = _curve_and_weights(b)
    if sorted(curve_a) != sorted(curve_b):
        raise RuntimeError(f"loss curves logged at different steps: {a} and {b}")
    deltas = {step: abs(curve_a[step] - curve_b[step]) for step in curve_a}
    first_diff = min((s for s, d in deltas.items() if d > 0), default=None)
    weight_diff = max(
        (weights_a[k].float() - weights_b[k].float()).abs().max().item() for k in weights_a
    )
    return {
        "max_loss_difference": max(deltas.values()),
        "first_step_that_differs": first_diff,
        "max_weight_difference": weight_diff,
        "bit_exact": weight_diff == 0 and max(deltas.values()) == 0,
        "steps_compared": len(deltas),
    }


def part_resume(ctx: Context) -> dict:
    """Checkpoint and resume on CUDA: the Shakespeare GPU config (bf16, compile, dropout 0.2)
    trained straight through twice (how far CUDA is from deterministic), and once SIGKILLed
    right after a checkpoint and started again: loss curves and final weights compared."""
    from train_common import text_shards

    from pipeline.train.checkpoints import latest_checkpoint

    shards, vocab = text_shards(ctx.work / "resume-shards")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    outs = {name: ctx.work / "resume" / name for name in ("straight", "again", "killed")}
    for name in ("straight", "again"):
        request = _resume_request(ctx, outs[name], shards, vocab)
        subprocess.run(_train_command(request), cwd=REPO, env=env, check=True)
    request = _resume_request(ctx, outs["killed"], shards, vocab)
    process = subprocess.Popen(_train_command(request), cwd=REPO, env=env, start_new_session=True)
    deadline = time.monotonic() + 300
    while latest_checkpoint(outs["killed"] / "checkpoints") is None and process.poll() is None:
        if time.monotonic() > deadline:
            raise RuntimeError("no checkpoint within 300 s")
        time.sleep(0.002)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = latest_checkpoint(outs["killed"] / "checkpoints")
    if process.returncode != -signal.SIGKILL or killed_at is None:
        raise RuntimeError(f"the run ended (exit {process.returncode}) before it could be killed")
    killed_step = int(killed_at.name.split("-")[1])
    print(f"killed after the checkpoint of step {killed_step}; starting it again", flush=True)
    subprocess.run(_train_command(request), cwd=REPO, env=env, check=True)
    resumed = json.loads((outs["killed"] / "train_metrics.json").read_text())
    if resumed.get("resumed_from_step") != killed_step:
        raise RuntimeError(f"expected a resume from step {killed_step}: {resumed}")
    noise = _differences(outs["straight"], outs["again"])
    resume = _differences(outs["straight"], outs["killed"])
    matches = resume["bit_exact"] or (
        resume["max_loss_difference"] <= max(noise["max_loss_difference"], 1e-6)
    )
    rows = [
        ["straight vs straight again"] + _difference_cells(noise),
        [f"straight vs killed at step {killed_step} + resumed"] + _difference_cells(resume),
    ]
    markdown = (
        f"{resumed['steps']} steps, {resumed['precision']}, {resumed['device']}; train loss "
        "logged every 10 steps (the curve travels in the checkpoint).\n\n"
        + markdown_table(
            [
                "comparison",
                "steps compared",
                "max |loss difference|",
                "first step that differs",
                "max |weight difference|",
                "bit-exact",
            ],
            rows,
        )
        + "\n"
    )
    numbers = {"killed_at_step": killed_step, "noise": noise, "resume": resume}
    goal = [
        "a resumed run matches an uninterrupted one (as closely as two uninterrupted runs)",
        _closeness(resume),
        matches,
    ]
    summary = (
        f"killed after step {killed_step}: resumed vs straight {_closeness(resume)}; "
        f"straight vs straight {_closeness(noise)}"
    )
    return result(summary, markdown, numbers, [goal])


def _closeness(diff: dict[str, Any]) -> str:
    return "bit-exact" if diff["bit_exact"] else f"max |dloss| {diff['max_loss_difference']:.2e}"


def _difference_cells(diff: dict[str, Any]) -> list[str]:
    return [
        str(diff["steps_compared"]),
        f"{diff['max_loss_difference']:.3g}",
        str(diff["first_step_that_differs"] or "-"),
        f"{diff['max_weight_difference']:.3g}",
        "yes" if diff["bit_exact"] else "no",
    ]


PARTS = {
    "environment": part_environment,
    "throughput": part_throughput,
    "shakespeare": part_shakespeare,
    "nanogpt": part_nanogpt,
    "finetune": part_finetune,
    "resume": part_resume,
    "batch_size": part_batch_size,
    "tf32": part_tf32,
    "max_autotune": part_max_autotune,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=sorted(PARTS))
    parser.add_argument("result", type=Path)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--nanogpt", type=Path, default=None)
    parser.add_argument("--deadline", type=float, default=None, help="time.time() to end by")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    deadline = args.deadline or time.time() + 3600
    ctx = Context(work=args.work, tiny=args.tiny, nanogpt=args.nanogpt, deadline=deadline)
    found = PARTS[args.part](ctx)
    args.result.write_text(json.dumps(found, indent=1, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
