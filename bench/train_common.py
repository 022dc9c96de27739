"""Shared pieces of the training benchmarks (bench/train_*.py): token shards, a plain PyTorch
training loop, and our Lightning Trainer, both timed the same way.

In: a model and train config (pipeline.config sections), a shards folder.
Out: `Timing` (steady-state tokens/s over the timed steps, seconds to the end of the first step,
final loss) for `plain_loop(...)` and for `lightning_run(...)`.

Both run the same work per step: the same GPT, the same batches (RandomTrainBatches, batch k
depends on (seed, k) alone), AdamW with the same parameter groups (fused on CUDA), the same
LambdaLR schedule, gradient clipping, the same precision (autocast for *-mixed). Steps
1..warmup are not timed (allocator warm-up, torch.compile); the clock runs from the end of step
`warmup` to the end of the last step, with a device synchronisation at both ends.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from pipeline.config import ModelConfig, TrainConfig
from pipeline.model.gpt import GPT, GPTConfig
from pipeline.tokenizer.token_shards import TokenShardWriter
from pipeline.train.data import RandomTrainBatches, TokenShardDataModule, TokenWindows
from pipeline.train.lit_module import LitGPT, lr_factor, param_groups
from pipeline.train.pretrain import build_trainer, resolve_precision

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "lm" / "tinyshakespeare" / "input.txt"
BOTCHAN = REPO / "data" / "sample" / "botchan.txt"


@dataclass
class Timing:
    name: str
    tokens_per_second: float
    first_step_seconds: float  # from the start of the run to the end of step 1 (compile)
    timed_steps: int
    final_loss: float
    peak_memory_gb: float | None = None  # the most the CUDA caching allocator held; None: CPU


def text_shards(folder: Path) -> tuple[Path, int]:
    """Character-level shards of Tiny Shakespeare (or the bundled botchan.txt); (dir, vocab)."""
    from pipeline.special_tokens import EOT_TOKEN
    from pipeline.tokenizer.char import new_char_tokenizer

    source = SHAKESPEARE if SHAKESPEARE.is_file() else BOTCHAN
    text = source.read_text(encoding="utf-8")
    tokenizer = new_char_tokenizer(sorted(set(text)), [EOT_TOKEN])
    ids = np.asarray(tokenizer.encode(text).ids)
    vocab = tokenizer.get_vocab_size()
    cut = int(len(ids) * 0.9)
    folder.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", ids[:cut]), ("val", ids[cut:])):
        with TokenShardWriter(folder, split, vocab, tokens_per_shard=10**9) as writer:
            writer.write(part)
    return folder, vocab


def random_shards(folder: Path, vocab_size: int, tokens: int, seed: int = 0) -> Path:
    """Uniformly random token ids (throughput does not depend on what the tokens say)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", tokens), ("val", max(tokens // 20, 10_000))):
        with TokenShardWriter(folder, split, vocab_size, tokens_per_shard=10**9) as writer:
            writer.write(rng.integers(0, vocab_size, count))
    return folder


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def _compile(model: torch.nn.Module, train: TrainConfig) -> None:
    """In place, as LitGPT.configure_model does, in the config's compile mode."""
    model.compile(mode=None if train.compile_mode == "default" else train.compile_mode)


def _device(train: TrainConfig) -> torch.device:
    if train.accelerator == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def plain_loop(
    model_cfg: ModelConfig,
    train: TrainConfig,
    vocab_size: int,
    shards: Path,
    warmup: int,
    name: str = "plain PyTorch loop",
    fused: bool | None = None,
) -> Timing:
    """The reference: a training loop written out by hand, no framework. `fused`: AdamW in one
    kernel (default: on CUDA, as LitGPT)."""
    device = _device(train)
    _reset_peak_memory(device)
    torch.manual_seed(train.seed)
    model = GPT(GPTConfig.from_model_config(model_cfg, vocab_size)).to(device)
    if train.compile:
        _compile(model, train)
    optimizer = torch.optim.AdamW(
        param_groups(model, train),
        lr=train.learning_rate,
        betas=(train.beta1, train.beta2),
        fused=device.type == "cuda" if fused is None else fused,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, train))
    windows = TokenWindows(sorted(shards.glob("train-*.bin")), model_cfg.block_size + 1, "train")
    stream = iter(RandomTrainBatches(windows, train.batch_size, train.seed))
    precision = resolve_precision(train)
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    if precision.endswith("-mixed"):
        autocast = torch.autocast(device.type, dtype=dtype)
    else:
        autocast = contextlib.nullcontext()
    if precision == "bf16-true":
        model.to(torch.bfloat16)
    params = [p for p in model.parameters()]
    accum = train.grad_accum_steps
    started = time.perf_counter()
    first = clock = 0.0
    for step in range(1, train.max_steps + 1):
        losses = []
        for _ in range(accum):
            x, y = (t.to(device, non_blocking=True) for t in next(stream))
            with autocast:
                _, loss = model(x, y)
            (loss / accum).backward()
            losses.append(loss.detach())
        if train.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if step % train.log_every_steps == 0:
            loss.item()  # a loop logs its loss now and then: a device sync, as LitGPT's
        if step == 1:
            _sync(device)
            first = time.perf_counter() - started
        if step == warmup:
            _sync(device)
            clock = time.perf_counter()
    _sync(device)
    seconds = time.perf_counter() - clock
    timed = train.max_steps - warmup
    tokens = timed * train.batch_size * accum * model_cfg.block_size
    loss = torch.stack(losses).mean().item()
    return Timing(name, tokens / seconds, first, timed, loss, _peak_memory_gb(device))


class StepClock(pl.Callback):
    """Times a Lightning run the way plain_loop times itself."""

    def __init__(self, warmup: int, device: torch.device):
        self.warmup = warmup
        self.device = device
        self.started = self.first = self.clock = self.end = 0.0
        self._last = -1

    def on_train_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last:
            return
        self._last = step
        if step == 1:
            _sync(self.device)
            self.first = time.perf_counter() - self.started
        if step == self.warmup:
            _sync(self.device)
            self.clock = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        _sync(self.device)
        self.end = time.perf_counter()


def lightning_run(
    model_cfg: ModelConfig,
    train: TrainConfig,
    vocab_size: int,
    shards: Path,
    warmup: int,
    name: str = "our Lightning Trainer",
) -> tuple[Timing, LitGPT]:
    """Our Trainer (pipeline.train.pretrain.build_trainer + LitGPT), no checkpoints."""
    device = _device(train)
    _reset_peak_memory(device)
    torch.manual_seed(train.seed)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    # no validation inside the timed run: the first one would fall after max_steps
    train = train.model_copy(update={"val_every_steps": train.max_steps + 1})
    data = TokenShardDataModule(
        shards, model_cfg.block_size, train.batch_size, 1, train.seed, train.grad_accum_steps
    )
    lit = LitGPT(GPTConfig.from_model_config(model_cfg, vocab_size), train)
    clock = StepClock(warmup, device)
    trainer = build_trainer(train, shards.parent / "lightning", [clock])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*val_check_interval.*")
        trainer.fit(lit, datamodule=data)
    timed = train.max_steps - warmup
    tokens = timed * train.batch_size * train.grad_accum_steps * model_cfg.block_size
    seconds = clock.end - clock.clock
    loss = float(lit.last_train_loss)
    return Timing(name, tokens / seconds, clock.first, timed, loss, _peak_memory_gb(device)), lit


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def environment() -> str:
    import platform

    import pytorch_lightning

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
    return (
        f"torch {torch.__version__}, pytorch-lightning {pytorch_lightning.__version__}, "
        f"{device or 'cpu'}, {torch.get_num_threads()} CPU threads, "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
